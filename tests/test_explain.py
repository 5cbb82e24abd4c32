"""``difflab explain``: each walk-through runs the real code, ends with its figure's path, and fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported here)

runner = CliRunner()


def test_without_a_topic_it_lists_them() -> None:
    from difflab.explain import TOPICS

    result = runner.invoke(app, ["explain"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()] == list(TOPICS)


def test_forward_process_prints_the_table_and_the_figure(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", "forward", "-c", str(tiny_checkpoint), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert Path(lines[-1]) == tmp_path / "forward-process.png" and Path(lines[-1]).is_file()
    rows = [line.split() for line in lines if line.strip().split(" ")[0].isdigit()]
    assert [row[0] for row in rows] == ["0", "100", "250", "500", "750", "999"]
    assert rows[0][1] == "100.0%" and rows[-1][1] == "0.0%"  # alpha_bar_0 ~ 1, alpha_bar_999 ~ 4e-5


def test_schedulers_topic_runs_on_a_digits_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", "schedulers", "-c", str(tiny_checkpoint), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| dpmpp-2m | 20 |" in result.output
    assert (tmp_path / "schedulers.png").is_file()


def test_lora_sizes_match_what_peft_trains(tiny_sd_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    from difflab.train.lora import load_base
    from difflab.train.lora_config import LoraTrainConfig

    result = runner.invoke(app, ["explain", "lora", "--model", str(tiny_sd_folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.output.splitlines() if line.strip().startswith("LoRA r=8"))
    pipe, _ = load_base(LoraTrainConfig(base=str(tiny_sd_folder), data="unused", trigger="hexagon", rank=8))
    trained = sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)
    assert int(row[2].replace(",", "")) == trained
    assert (tmp_path / "lora.png").is_file()


def test_latent_space_runs_on_a_text_to_image_folder(tiny_sd_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    result = runner.invoke(app, ["explain", "latent-space", "--model", str(tiny_sd_folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "fewer" in result.output and (tmp_path / "latent-space.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["explain", "nonsense"], "topic must be one of"),
    (["explain", "guidance", "--model", "/nowhere/model"], "topic guidance runs on a text-to-image model"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


TINY_SHAPES = Path(__file__).resolve().parents[1] / "src" / "difflab" / "models" / "tiny-shapes" / "model_index.json"
needs_tiny_shapes = pytest.mark.skipif(not TINY_SHAPES.is_file(), reason="the bundled tiny-shapes weights are absent")


def _numbers(line: str) -> list[str]:
    return line.split()


def test_vae_topic_quotes_its_table(tiny_sd_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    result = runner.invoke(app, ["explain", "vae", "--model", str(tiny_sd_folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rms = {cells[0]: cells[1] for cells in map(str.split, lines) if cells[:1] in (["large"], ["small"])}
    assert sorted(rms) == ["large", "small"]
    prose = " ".join(lines)
    assert f"(RMS {rms['small']} against {rms['large']})" in prose
    small, large = float(rms["small"]), float(rms["large"])
    word = "more" if small > large else "less" if small < large else "as much"
    assert f"Small shapes lose {word} in the round trip" in prose
    assert "scaling factor" in prose and Path(lines[-1]) == tmp_path / "vae.png" and Path(lines[-1]).is_file()


@needs_tiny_shapes
def test_clip_skip_topic_draws_each_skip_and_quotes_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the bundled model (3 text-encoder layers): rows clip skip 1..3, images the engine draws with
    ``clip_skip``, and the sentence's adherence figures are the table's first and last rows."""
    from difflab.explain import clip_skip

    monkeypatch.setattr(clip_skip, "PROMPTS", ("a red circle",))
    monkeypatch.setattr(clip_skip, "SEEDS", 1)
    result = runner.invoke(app, ["explain", "clip-skip", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [cells for cells in map(str.split, result.output.splitlines()) if len(cells) == 4 and cells[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][1:3] == ["1.000", "0.000"]  # clip skip 1 against itself
    assert float(rows[2][2]) > 0  # skipping layers changes the picture drawn from the same seed
    prose = " ".join(result.output.splitlines())
    assert f"from {rows[0][3]} at clip skip 1 to {rows[2][3]} at 3" in prose
    assert (tmp_path / "clip-skip.png").is_file()


@pytest.mark.slow
@needs_tiny_shapes
def test_controlnet_topic_runs_the_bundled_controlnet_with_and_without(tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", "controlnet", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    f1 = {cells[1]: float(cells[3]) for cells in map(str.split, result.output.splitlines())
          if len(cells) == 5 and cells[0] == "|" and cells[1] in ("0", "1")}
    assert f1["1"] > f1["0"]  # measured here: 0.911 with control, 0.195 without
    assert f"edge F1 {f1['1']:.3f} against {f1['0']:.3f} without" in " ".join(result.output.splitlines())
    assert (tmp_path / "controlnet.png").is_file() and (tmp_path / "controlnet-picture.png").is_file()


def test_controlnet_topic_names_a_model_without_a_controlnet(tiny_sd_folder: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = runner.invoke(app, ["explain", "controlnet", "--model", str(tiny_sd_folder), "-o", str(out)])
    assert result.exit_code == 2
    assert "topic controlnet runs on a text-to-image model: its canny ControlNet" in result.output
    assert not out.exists()
