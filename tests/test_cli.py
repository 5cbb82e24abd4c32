"""The command line: --help everywhere, outputs written, and bad input as one line naming the field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], ["ddpm"], ["ddpm", "train"], ["ddpm", "sample"], ["viz"], ["generate"], ["pull"], ["train"], ["train", "t2i"],
                                     ["viz", "schedules"], ["viz", "forward"], ["viz", "trajectory"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_sample_writes_one_png_per_sample_and_a_grid(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("ddpm", "sample", "-c", tiny_checkpoint, "--label", "7", "-n", 12, "--sampler", "euler",
                    "--steps", 3, "--seed", 40, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    # A1111's names, as generate's: counter then seed (sample i is drawn with seed + i)
    samples = sorted(tmp_path.glob("0*.png"))
    assert [p.name for p in samples] == [f"{i:05d}-{40 + i}.png" for i in range(12)]
    assert Image.open(samples[0]).size == (8, 8)
    assert (tmp_path / "grid-0000-40.png").is_file()
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = invoke("ddpm", "sample", "-c", tiny_checkpoint, "--label", "3", "-n", 2, "--steps", 3, "--seed", 40,
                   "-o", tmp_path)
    assert again.exit_code == 0, again.output
    assert all((tmp_path / name).read_bytes() == data for name, data in first.items()), "nothing replaced"
    assert {"00012-40.png", "00013-41.png", "grid-0001-40.png"} <= {p.name for p in tmp_path.iterdir()}


def _corrupt_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        target.joinpath(file.name).write_bytes(file.read_bytes())
    (target / "model.safetensors").write_bytes(b"garbage")
    return target


BAD_SAMPLE_INPUT = {
    "unknown sampler": (["--sampler", "plms"], "sampler must be one of ddpm, ddim, euler"),
    "steps < 1": (["--steps", "0"], "steps must be between 1 and 1000"),
    "steps > T": (["--steps", "1001"], "steps must be between 1 and 1000"),
    "label out of range": (["--label", "10"], "label must be in 0..9"),
    "label not a class": (["--label", "seven"], "label must be one of 0, 1, 2"),
    "negative guidance": (["--guidance", "-1"], "guidance must be a finite number >= 0"),
    "nan guidance": (["--guidance", "nan"], "guidance must be a finite number >= 0"),
    "n < 1": (["-n", "0"], "n must be >= 1"),
    "eta on euler": (["--eta", "0.5", "--sampler", "euler"], "eta applies to the ddim and euler-ancestral"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLE_INPUT))
def test_bad_sample_input_is_one_line_and_writes_nothing(case: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    arguments, message = BAD_SAMPLE_INPUT[case]
    out = tmp_path / "out"
    result = invoke("ddpm", "sample", "-c", tiny_checkpoint, "-o", out, *arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0, "one line, no traceback"
    assert not out.exists()


def test_missing_and_corrupt_checkpoints(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("ddpm", "sample", "-c", tmp_path / "absent", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in result.output
    corrupt = _corrupt_copy(tiny_checkpoint, tmp_path / "corrupt")
    result = invoke("ddpm", "sample", "-c", corrupt, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output
    result = invoke("ddpm", "sample", "-c", tmp_path / "weights.pt", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "pickle" in result.output
    assert not (tmp_path / "out").exists()


def test_viz_schedules_and_forward(tmp_path: Path) -> None:
    result = invoke("viz", "schedules", "-o", tmp_path / "schedules.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "schedules.png").size[0] > 500
    result = invoke("viz", "forward", "digit:0", "-o", tmp_path / "forward.png", "--columns", 6)
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "forward.png")
    assert grid.width > 6 * 64 and grid.height > 2 * 64  # two schedules x six timesteps of 64 px
    bad = invoke("viz", "schedules", "--schedules", "linear,quadratic", "-o", tmp_path / "x.png")
    assert bad.exit_code == 2 and "quadratic" in bad.output
    missing = invoke("viz", "forward", tmp_path / "nope.png", "-o", tmp_path / "f.png")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_train_rejects_bad_dataset(tmp_path: Path) -> None:
    result = invoke("ddpm", "train", "--dataset", tmp_path / "no-such-folder", "--steps", 1, "-o", tmp_path / "run")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_viz_trajectory(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("viz", "trajectory", "-c", tiny_checkpoint, "--steps", 5, "-o", tmp_path / "t.png")
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "t.png")
    assert grid.width >= 5 * 8 * 6 and grid.height >= 2 * 8 * 6  # 5 steps x (state, estimate) at scale 6


def _commands(command, path=()):
    """Every command of the click tree under ``command``, as (path, click command)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer has its own click)
        yield from _commands(sub, (*path, name))


def _squeezed(text: str) -> str:
    return "".join(text.split())  # help is wrapped (and hyphenated words split) at the terminal width


def test_every_help_keeps_its_bracketed_text() -> None:
    """'Denoising steps [default: the model's]' showed as 'Denoising steps .': rich markup took every [...] for a
    style tag. Every command's --help must show every bracketed phrase its help strings contain."""
    import re

    import typer

    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        brackets = [b for text in texts for b in re.findall(r"\[[^\]]*\]", text)]
        if not brackets:
            continue
        result = invoke(*path, "--help")
        assert result.exit_code == 0, result.output
        shown = _squeezed(result.output)
        missing = [b for b in brackets if _squeezed(b) not in shown]
        assert not missing, f"difflab {' '.join(path)} --help lost {missing}"
        checked += len(brackets)
    assert checked >= 15


def test_version() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    import difflab

    result = invoke("--version")
    assert result.exit_code == 0
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert result.output.strip() == f"difflab {difflab.__version__}" == f"difflab {project['version']}"


@pytest.mark.parametrize("arguments,kind", [
    (["ddpm", "sample", "-c", "{checkpoint}"], "folder"),
    (["ddpm", "train", "--steps", "1"], "folder"),
    (["viz", "schedules"], "file"),
    (["viz", "trajectory", "-c", "{checkpoint}"], "file"),
    (["viz", "samplers", "-c", "{checkpoint}"], "file"),
    (["explain", "forward-process"], "folder"),
    (["lora", "make-dataset", "-n", "2"], "folder"),
    (["train", "t2i"], "folder"),
])
def test_a_bad_out_fails_first_naming_it(arguments, kind, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A file where a folder goes (or a folder where a file goes) fails before anything loads: exit 2, one line
    naming --out, and the file untouched."""
    arguments = [a.replace("{checkpoint}", str(tiny_checkpoint)) for a in arguments]
    target = tmp_path / "taken"
    if kind == "folder":
        target.write_bytes(b"not a folder")
    else:
        target.mkdir()
    result = invoke(*arguments, "-o", target)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --out {str(target)!r} is a ") and result.output.count("\n") == 1
    assert target.is_dir() if kind == "file" else target.read_bytes() == b"not a folder"


@pytest.mark.parametrize("arguments", [
    ["batch", "{prompts}"],
    ["train", "lora", "--data", "{data}", "--trigger", "hexagon"],
    ["train", "controlnet"],
    ["eval", "adherence"],
    ["eval", "guidance-sweep"],
    ["eval", "negative"],
    ["viz", "control-scale", "{picture}", "-p", "a circle"],
    ["control", "preprocess", "canny", "{picture}"],
])
@pytest.mark.parametrize("where", ["a file", "unwritable"])
def test_engine_commands_check_out_before_loading(arguments, where: str, tmp_path: Path) -> None:
    """`train lora -o <a file>` failed after 31 s of set-up, `batch -o <read-only>` after generating."""
    from tests.unwritable import unwritable_folder

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red circle"}\n')
    (tmp_path / "data").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "picture.png")
    arguments = [a.format(prompts=tmp_path / "prompts.jsonl", data=tmp_path / "data", picture=tmp_path / "picture.png")
                 for a in arguments]
    is_file = arguments[0] == "control"
    if where == "a file":
        out = tmp_path / ("a-folder.png" if is_file else "a-file")
        out.mkdir() if is_file else out.write_bytes(b"x")
    else:
        out = unwritable_folder(tmp_path) / ("new.png" if is_file else "new")
    result = invoke(*arguments, "-o", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --out {str(out)!r} ") and result.output.count("\n") == 1, result.output


def test_batch_whose_folder_fails_mid_run_is_one_line_saying_how_to_resume(tmp_path: Path, monkeypatch) -> None:
    """The second line's images are drawn, then the folder is a file: no traceback, exit 1, --out named."""
    import shutil

    import difflab.engine.pipeline as pipeline

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square"}\n')
    out, calls, real_run = tmp_path / "out", [], pipeline.run

    def run_then_lose_the_folder(*args, **kwargs):
        result = real_run(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(out)
            out.write_bytes(b"a file where the folder was")
        return result

    monkeypatch.setattr(pipeline, "run", run_then_lose_the_folder)
    result = runner.invoke(app, ["batch", str(tmp_path / "prompts.jsonl"), "--steps", "2", "-o", str(out)])
    assert result.exit_code == 1, result.output
    [error] = result.stderr.strip().splitlines()[-1:]
    assert error.startswith(f"error: --out {str(out)!r}: could not write (") and "after 1 image(s)" in error
    assert "rerun the same command to resume" in error and "Traceback" not in result.output
