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
                    "--steps", 3, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    samples = sorted(tmp_path.glob("sample-*.png"))
    assert len(samples) == 12
    assert Image.open(samples[0]).size == (8, 8)
    assert (tmp_path / "grid.png").is_file()


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
