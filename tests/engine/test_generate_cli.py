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
