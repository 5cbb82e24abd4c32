"""`difflab batch`: prompt files in, a resumable folder of PNGs + manifest + contact sheet out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.batch import MANIFEST_FILE, BatchError, FolderLock
from difflab.engine.metadata import read_png_metadata
from difflab.engine.modes import file_sha256
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request

runner = CliRunner()
DEFAULTS = ["--steps", "4", "--width", "64", "--height", "64", "--scheduler", "euler-a"]
LINES = [  # (prompt, fields over the defaults); 6 lines, 10 images
    ("a red circle", {"seed": 100, "n": 2}),
    ("a blue square, on the left", {"seed": 200}),
    ("a green triangle", {"seed": 300, "n": 3, "negative_prompt": "red"}),
    ("a yellow circle", {"seed": 400, "steps": 2}),
    ("a red square", {"seed": 500, "n": 2, "guidance": 1.0}),
    ("a blue triangle", {"seed": 600}),
]
TOTAL = sum(fields.get("n", 1) for _, fields in LINES)


def write_jsonl(path: Path, lines=LINES, model: Path | None = None) -> Path:
    rows = [{"prompt": prompt, **fields, **({"model": str(model)} if model else {})} for prompt, fields in lines]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def batch(prompts: Path, out: Path, model: Path, *extra: str):
    return runner.invoke(app, ["batch", str(prompts), "-o", str(out), "--model", str(model), *DEFAULTS, *extra])


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST_FILE).read_text().splitlines()]


def identities(entries: list[dict]) -> dict[tuple[int, int], tuple]:
    return {(e["line"], e["index"]): (e["seed"], e["path"], e["sha256"]) for e in entries}


def counts(output: str) -> tuple[int, int]:
    """(generated, already finished) from the summary line."""
    line = next(text for text in output.splitlines() if "images generated" in text)
    return int(line.split()[0]), int(line.split(", ")[1].split()[0])


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("0*.png"))}


@pytest.fixture(scope="module")
def reference(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prompt file, folder of an uninterrupted run): what every resumed run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("batch-reference")
    prompts = write_jsonl(root / "prompts.jsonl")
    result = batch(prompts, root / "out", tiny_sd_folder)
    assert result.exit_code == 0, result.output
    assert f"{TOTAL} images generated, 0 already finished" in result.output
    return prompts, root / "out"


def test_a_batch_writes_named_images_a_manifest_and_a_contact_sheet(reference, tiny_sd_folder: Path) -> None:
    prompts, out = reference
    names = sorted(pngs(out))
    assert names[:3] == ["00001-00-100.png", "00001-01-101.png", "00002-00-200.png"] and len(names) == TOTAL
    entries = manifest(out)
    assert [(e["line"], e["index"]) for e in entries] == [(line, i) for line, (_, f) in enumerate(LINES, 1)
                                                          for i in range(f.get("n", 1))]
    assert all(file_sha256(str(out / e["path"])) == e["sha256"] and e["seconds"] > 0 for e in entries)
    # line 3's image 2 is what the engine makes for that request: CLI defaults under the line's own fields
    _, record = read_png_metadata(out / "00003-02-302.png")
    assert record["request"]["negative_prompt"] == "red" and record["request"]["steps"] == 4
    expected = run(build_request(prompt="a green triangle", model=str(tiny_sd_folder), seed=300, n=3, steps=4,
                                 width=64, height=64, scheduler="Euler a", negative_prompt="red"), PipelineCache())
    with Image.open(out / "00003-02-302.png") as image:
        assert np.array_equal(np.asarray(image), np.asarray(expected.images[2]))
    with Image.open(out / "contact-sheet.png") as sheet:  # 10 captioned 128px tiles: a 4 x 3 grid
        assert sheet.width > 4 * 128 and sheet.height > 3 * 128


def test_rerunning_a_finished_batch_does_nothing(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    prompts, out = reference
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.glob("0*.png")}
    result = batch(prompts, copy, tiny_sd_folder)
    assert result.exit_code == 0, result.output
    assert f"0 images generated, {TOTAL} already finished" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in copy.glob("0*.png")} == before
    assert manifest(copy) == manifest(out)


def test_csv_gives_the_same_files_as_jsonl(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    prompts, out = reference
    header = ["prompt", "seed", "n", "negative_prompt", "steps", "guidance"]
    rows = [",".join(header)]
    for prompt, fields in LINES:
        cells = [json.dumps(prompt) if "," in prompt else prompt]  # CSV quoting is JSON's for these prompts
        cells += [str(fields.get(name, "")) for name in header[1:]]  # empty cell: the command-line default
        rows.append(",".join(cells))
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    result = batch(csv_file, tmp_path / "out", tiny_sd_folder)
    assert result.exit_code == 0, result.output
    made = pngs(tmp_path / "out")
    assert next(iter(made)) == "00002-00-100.png"  # names carry the file's line, and line 1 is the header
    assert list(made.values()) == list(pngs(out).values())  # same requests: the same bytes, metadata included


def test_resume_after_kill_9_finishes_every_image_exactly_once(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    """A real SIGKILL as soon as the first image is in the manifest, then the same command again."""
    prompts, expected = reference
    out = tmp_path / "out"
    command = [sys.executable, "-m", "difflab.cli", "batch", str(prompts), "-o", str(out), "--model",
               str(tiny_sd_folder), *DEFAULTS]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ((out / MANIFEST_FILE).is_file() and (out / MANIFEST_FILE).stat().st_size > 0):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the batch wrote no manifest entry in 300 s"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    finished_before = len((out / MANIFEST_FILE).read_text().splitlines())
    print(f"killed with {finished_before} of {TOTAL} images in the manifest")
    assert 1 <= finished_before < TOTAL, "the kill came after the batch had finished: nothing to resume"
    assert not (out / "contact-sheet.png").exists()

    result = batch(prompts, out, tiny_sd_folder)
    assert result.exit_code == 0, result.output
    generated, already = counts(result.output)
    assert generated + already == TOTAL and already >= 1
    keys = [(e["line"], e["index"]) for e in manifest(out)]
    assert len(keys) == len(set(keys)) == TOTAL  # every image exactly once
    assert pngs(out) == pngs(expected)  # byte-equal to the uninterrupted run
    assert not list(out.glob(".*.tmp")) and (out / "contact-sheet.png").is_file()


def test_resume_repairs_every_kind_of_damage(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    prompts, expected = reference
    out = tmp_path / "out"
    shutil.copytree(expected, out)
    entries = manifest(out)
    (out / "00002-00-200.png").unlink()  # a file gone
    (out / "00004-00-400.png").write_bytes(b"\x89PNG half")  # a file changed since its entry
    kept = [e for e in entries if e["path"] != "00005-01-501.png"]  # written, killed before its manifest line
    torn = json.dumps(entries[-1])[:25]  # a manifest line cut by the kill
    (out / MANIFEST_FILE).write_text("".join(json.dumps(e) + "\n" for e in kept + kept[:1]) + torn)  # and a duplicate
    (out / ".00006-00-600.png.abc.tmp").write_bytes(b"half")  # a killed atomic write's temporary file
    result = batch(prompts, out, tiny_sd_folder)
    assert result.exit_code == 0, result.output
    assert f"3 images generated, {TOTAL - 3} already finished" in result.output
    assert identities(manifest(out)) == identities(entries) and len(manifest(out)) == TOTAL
    assert pngs(out) == pngs(expected) and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("content,suffix,messages", [
    ('{"prompt": "a red circle"}\n\n{"prompt": "a blue square", "steps": 0}\n', ".jsonl",
     ["line 3: steps: Input should be greater than or equal to 1"]),
    ('{"prompt": "a red circle", "stpes": 5}\n', ".jsonl", ["line 1: stpes: is not a known field"]),
    ('{"prompt": "a red circle"}\n{"prompt": "x", \n', ".jsonl", ["line 2: not valid JSON"]),
    ('["a red circle"]\n', ".jsonl", ["line 1: must be a JSON object"]),
    ('{"prompt": "a", "width": 100}\n{"prompt": ""}\n{"prompt": "b", "scheduler": "warp"}\n', ".jsonl",
     ["line 1: width: must be a multiple of 8", "prompt: must not be empty", "line 3: scheduler: scheduler must be one of"]),
    ('{"prompt": "a", "model": "no-such-model"}\n', ".jsonl", ["line 1: model: model must be a preset"]),
    ('{"prompt": "a"}\n{"prompt": "a", "loras": ["no-such-lora"]}\n', ".jsonl", ["line 2: lora 'no-such-lora': not found"]),
    ('{"prompt": "a", "strength": 0.5}\n', ".jsonl", ["line 1:", "strength: needs init_image"]),
    ('{"prompt": "a", "init_image": "nowhere.png"}\n', ".jsonl", ["line 1:", "init_image: file 'nowhere.png' does not exist"]),
    ("prompt,seed\na red circle,1\na blue square,-4\n", ".csv", ["line 3: seed: Input should be greater than or equal to 0"]),
    ("prompt,steps\n\"a red,\nround circle\",3\nb,many\n", ".csv", ["line 4: steps: Input should be a valid integer"]),
    ("prompt,colour\na,red\n", ".csv", ["line 1: header: 'colour' is not a field"]),
    ("prompt,seed\na,1,2\n", ".csv", ["line 2: has 3 cells but the header has 2 columns"]),
    ("\n\n", ".jsonl", ["no requests"]),
    ("prompt\n", ".txt", ["must end in .jsonl or .csv"]),
])
def test_bad_lines_name_line_and_field_and_write_nothing(tiny_sd_folder: Path, tmp_path: Path,
                                                         content, suffix, messages) -> None:
    prompts = tmp_path / f"prompts{suffix}"
    prompts.write_text(content)
    result = batch(prompts, tmp_path / "out", tiny_sd_folder)
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output
    assert not (tmp_path / "out").exists()


def test_a_bad_option_is_named_as_the_option(tiny_sd_folder: Path, tmp_path: Path) -> None:
    result = batch(write_jsonl(tmp_path / "p.jsonl"), tmp_path / "out", tiny_sd_folder, "--steps", "0")
    assert result.exit_code == 2 and "command-line options: steps: Input should be greater" in result.output
    assert not (tmp_path / "out").exists()


def test_another_batch_or_a_foreign_folder_is_refused(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    prompts, out = reference
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in copy.iterdir())
    other = write_jsonl(tmp_path / "other.jsonl", LINES[:2])
    for command in (batch(other, copy, tiny_sd_folder), batch(prompts, copy, tiny_sd_folder, "--guidance", "3")):
        assert command.exit_code == 2 and "holds another batch (from" in command.output, command.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in copy.iterdir()) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    result = batch(prompts, foreign, tiny_sd_folder)
    assert result.exit_code == 2 and "is not empty and holds no batch" in result.output
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]


def test_another_backend_or_compile_makes_it_another_batch(reference, tiny_sd_folder: Path, tmp_path: Path) -> None:
    """OpenVINO's images differ from PyTorch's (up to 2/255) and compiled U-Nets' from eager ones (1/255): a torch
    folder resumed with either would mix two batches; resumed as torch it resumes. The refusal comes before any
    weights load."""
    prompts, out = reference
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in copy.iterdir())
    refusals = [batch(prompts, copy, tiny_sd_folder, "--compile")]
    try:
        import openvino  # noqa: F401

        refusals.append(batch(prompts, copy, tiny_sd_folder, "--backend", "openvino"))
    except ImportError:  # without the extra the backend is refused earlier (test_openvino_refusals.py)
        pass
    for command in refusals:
        assert command.exit_code == 2 and "holds another batch (from" in command.output, command.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in copy.iterdir()) == before
    again = batch(prompts, copy, tiny_sd_folder, "--backend", "torch", "--no-compile")
    assert again.exit_code == 0 and f"0 images generated, {TOTAL} already finished" in again.output, again.output


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path: Path) -> None:
    with FolderLock(tmp_path):
        with pytest.raises(BatchError, match="another difflab batch is writing"):
            FolderLock(tmp_path).__enter__()
    with FolderLock(tmp_path):  # released on exit
        pass


def test_an_init_image_that_changed_makes_it_another_batch(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(init)
    prompts = tmp_path / "img2img.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red circle", "init_image": str(init), "strength": 0.5}) + "\n")
    result = batch(prompts, tmp_path / "out", tiny_sd_folder)
    assert result.exit_code == 0 and "1 images generated" in result.output, result.output
    _, record = read_png_metadata(tmp_path / "out" / "00001-00-0.png")
    assert record["mode"]["mode"] == "img2img"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(init)  # same path, new content: resuming would mix the two
    result = batch(prompts, tmp_path / "out", tiny_sd_folder)
    assert result.exit_code == 2 and "holds another batch" in result.output
