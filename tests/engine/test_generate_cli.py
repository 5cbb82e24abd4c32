"""`difflab generate`: PNGs with metadata, printed paths, and bad input as one line with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.metadata import parse_parameters, read_png_metadata

runner = CliRunner()


def test_generate_writes_pngs_with_metadata(tiny_sd_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "a red circle", "--model", str(tiny_sd_folder), "-n", "2", "--steps", "3",
                                 "--width", "64", "--height", "64", "--seed", "5", "--negative", "blue",
                                 "--scheduler", "euler-a", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.output.split() if line.endswith(".png")]
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    assert Image.open(paths[0]).size == (64, 64)
    text, record = read_png_metadata(paths[1])
    prompt, negative, settings = parse_parameters(text)
    assert (prompt, negative) == ("a red circle", "blue")
    assert settings["Seed"] == "6" and settings["Sampler"] == "Euler a" and settings["Steps"] == "3"
    assert settings["Size"] == "64x64" and len(settings["Model hash"]) == 10
    assert record["request"]["seed"] == 5 and record["image_index"] == 1 and record["seed"] == 6
    assert record["versions"]["diffusers"]


@pytest.mark.parametrize("arguments,message", [
    (["--width", "100"], "width: must be a multiple of 8"),
    (["--steps", "0"], "steps: Input should be greater than or equal to 1"),
    (["--guidance", "nan"], "guidance: must be a finite number >= 0"),
    (["-n", "1000"], "n: Input should be less than or equal to 64"),
    (["--scheduler", "warp"], "scheduler must be one of"),
    (["--model", "no-such-model"], "model must be a preset"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_sd_folder: Path, tmp_path: Path, arguments, message) -> None:
    arguments = ["--model", str(tiny_sd_folder), *arguments] if "--model" not in arguments else arguments
    result = runner.invoke(app, ["generate", "a red circle", *arguments, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def _generate(model: Path, out: Path, prompt: str, *arguments: str):
    return runner.invoke(app, ["generate", prompt, "--model", str(model), "--steps", "2", *arguments, "-o", str(out)])


def test_a_second_run_never_replaces_an_earlier_image(tiny_sd_folder: Path, tmp_path: Path) -> None:
    """The same folder, another prompt, the default seed: the first image stays, byte for byte, and the new ones
    take the next numbers (A1111's NNNNN-SEED.png)."""
    first = _generate(tiny_sd_folder, tmp_path, "a red circle")
    assert first.exit_code == 0, first.output
    assert first.stdout.split() == [str(tmp_path / "00000-0.png")]
    original = (tmp_path / "00000-0.png").read_bytes()
    second = _generate(tiny_sd_folder, tmp_path, "a blue square", "-n", "2")
    assert second.exit_code == 0, second.output
    assert second.stdout.split() == [str(tmp_path / "00001-0.png"), str(tmp_path / "00002-1.png")]
    assert (tmp_path / "00000-0.png").read_bytes() == original
    assert parse_parameters(read_png_metadata(tmp_path / "00000-0.png")[0])[0] == "a red circle"
    assert parse_parameters(read_png_metadata(tmp_path / "00002-1.png")[0])[0] == "a blue square"


def _corrupt_model(source: Path, target: Path) -> Path:
    """A copy of the model whose U-Net weights are garbage: loading it fails, so an error about anything else
    proves the check came before the weights loaded."""
    import shutil

    shutil.copytree(source, target)
    for weights in (target / "unet").glob("*.safetensors"):
        weights.write_bytes(b"garbage")
    return target


@pytest.mark.parametrize("case", ["a file", "below a file", "unwritable"])
def test_a_bad_out_fails_before_the_model_loads(case: str, tiny_sd_folder: Path, tmp_path: Path) -> None:
    from tests.unwritable import unwritable_folder

    model = _corrupt_model(tiny_sd_folder, tmp_path / "corrupt-model")
    out = {"a file": tmp_path / "taken.png", "below a file": tmp_path / "taken.png" / "sub",
           "unwritable": None}[case]
    if out is None:
        out = unwritable_folder(tmp_path) / "outputs"
    (tmp_path / "taken.png").write_bytes(b"x")
    result = _generate(model, out, "a red circle")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --out {str(out)!r} ") and result.output.count("\n") == 1
    assert (tmp_path / "taken.png").read_bytes() == b"x"


def test_a_folder_that_fails_after_generating_keeps_the_images_in_a_rescue_folder(
        tiny_sd_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """The run succeeds, then its folder is gone and a file has its name (a clean-up script, another user): the
    images are written to the rescue folder, the paths printed, one line says where, exit 1."""
    import difflab.engine.pipeline as pipeline

    out, rescue = tmp_path / "out", tmp_path / "rescue"
    monkeypatch.setenv("DIFFLAB_RESCUE_DIR", str(rescue))
    real_run = pipeline.run

    def run_then_lose_the_folder(*args, **kwargs):
        result = real_run(*args, **kwargs)
        out.write_bytes(b"a file where the folder was")
        return result

    monkeypatch.setattr(pipeline, "run", run_then_lose_the_folder)
    result = _generate(tiny_sd_folder, out, "a red circle", "-n", "2", "--seed", "3")
    assert result.exit_code == 1, result.output
    rescued = sorted(rescue.glob("*/*.png"))
    assert [p.name for p in rescued] == ["00000-3.png", "00001-4.png"]
    assert parse_parameters(read_png_metadata(rescued[1])[0])[2]["Seed"] == "4"
    assert result.stdout.split() == [str(p) for p in rescued]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert error.startswith(f"error: --out {str(out)!r}: could not write") and str(rescued[0].parent) in error
