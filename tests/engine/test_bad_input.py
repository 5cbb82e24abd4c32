"""The bad-input table: every bad value given to `difflab generate` is exit status 2, one line on the output that
names the field, and nothing written to the output folder (not even the folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def bad_models(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files that must be refused: garbage named .safetensors, a truncated real checkpoint, a pickle, and a
    Flux folder (for the sampler that does not fit flow matching)."""
    from difflab.engine.single_file import save_single_file

    from .family_fixtures import save_family_pipeline

    root = tmp_path_factory.mktemp("bad-models")
    garbage = root / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    whole = save_single_file(tiny_sd_folder, root / "whole.safetensors")
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    pickle = root / "model.ckpt"
    pickle.write_bytes(b"not even read: refused by its suffix")
    return {"garbage": garbage, "truncated": truncated, "pickle": pickle,
            "flux": save_family_pipeline("flux", root / "flux")}


CASES = [  # (id, arguments, text the one line must hold: it names the field)
    ("width-not-multiple-of-8", ["--width", "100"], "width: must be a multiple of 8"),
    ("height-not-multiple-of-8", ["--height", "60"], "height: must be a multiple of 8"),
    ("width-too-small", ["--width", "0"], "width: Input should be greater than or equal to 8"),
    ("height-too-large", ["--height", "8192"], "height: Input should be less than or equal to 4096"),
    ("steps-zero", ["--steps", "0"], "steps: Input should be greater than or equal to 1"),
    ("steps-negative", ["--steps", "-3"], "steps: Input should be greater than or equal to 1"),
    ("guidance-negative", ["--guidance", "-1"], "guidance: must be a finite number >= 0"),
    ("guidance-nan", ["--guidance", "nan"], "guidance: must be a finite number >= 0"),
    ("guidance-inf", ["--guidance", "inf"], "guidance: must be a finite number >= 0"),
    ("n-too-large", ["-n", "1000"], "n: Input should be less than or equal to 64"),
    ("n-zero", ["-n", "0"], "n: Input should be greater than or equal to 1"),
    ("unknown-model", ["--model", "no-such-model"], "model must be a preset"),
    ("unknown-scheduler", ["--scheduler", "warp drive"], "scheduler must be one of"),
    ("unknown-memory-knob", ["--memory", "vae_tiling,turbo"], "memory: unknown knob 'turbo'"),
    ("corrupt-safetensors", ["--model", "{garbage}"], "model: '{garbage}' is not a valid safetensors file"),
    ("truncated-safetensors", ["--model", "{truncated}"], "is not a valid safetensors file"),
    ("pickle-without-flag", ["--model", "{pickle}"], "is a pickle checkpoint"),
    ("flow-model-a1111-sampler", ["--model", "{flux}", "--scheduler", "DPM++ 2M"],
     "scheduler: 'DPM++ 2M' is a sampler for noise-prediction models"),
]


@pytest.mark.parametrize("arguments,message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_exit_2_one_line_nothing_written(tiny_sd_folder: Path, bad_models, tmp_path: Path,
                                                      arguments: list[str], message: str) -> None:
    paths = {name: str(path) for name, path in bad_models.items()}
    arguments = [argument.format(**paths) for argument in arguments]
    message = message.format(**paths)
    if "--model" not in arguments:
        arguments = ["--model", str(tiny_sd_folder), "--steps", "2", *arguments]
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "a red circle", "--width", "64", "--height", "64", *arguments,
                                 "-o", str(out)] if "--width" not in arguments and "--height" not in arguments
                           else ["generate", "a red circle", *arguments, "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]
    assert not out.exists()
