"""The bundled tiny-shapes model: a plain diffusers folder, small enough to ship, and it draws what it is asked.

Accuracy is read by the deterministic analyzer (difflab.eval.adherence), which is tested on its own against clean
renders; the thresholds here sit well below what the model card measures so that they catch a broken model or a
broken engine path, not run-to-run noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.registry import BUNDLED_DIR
from difflab.eval.adherence import read_image

MODEL = BUNDLED_DIR / "tiny-shapes"
runner = CliRunner()
# The acceptance tests of issue 8. They run as soon as the weights are in the package; until the recipe's run
# reaches its targets the weights are not shipped, and these say so instead of passing.
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(),
                                reason="the bundled tiny-shapes weights are not shipped yet (issue 8)")


def test_is_a_plain_diffusers_folder_under_30_mb() -> None:
    from diffusers import StableDiffusionPipeline

    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]  # safetensors only
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), use_safetensors=True, local_files_only=True)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    ids = pipe.tokenizer(["red circle", "blue square"]).input_ids
    assert ids[0] != ids[1]  # the word-level tokenizer keeps words apart


def test_generate_draws_the_default_prompt(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "a red circle on a blue background", "-n", "4", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    paths = sorted(tmp_path.glob("*.png"))
    assert len(paths) == 4
    readings = [read_image(path) for path in paths]
    hits = [(r.shape, r.color, r.background) == ("circle", "red", "blue") for r in readings]
    assert sum(hits) >= 3, readings


def test_adherence_over_every_shape_and_colour() -> None:
    from difflab.eval.t2i import adherence

    report, _, _ = adherence("tiny-shapes", per_pair=1, guidance=7.5, steps=20, scheduler="DPM++ 2M")
    assert report.accuracy["color"] >= 0.85, report.table()
    assert report.shape_and_color_accuracy >= 0.7, report.table()


@pytest.mark.parametrize("negative, least_share_without", [
    ("red", 0.0),    # the example; "a circle" comes out red for few seeds (1 in 21 over 64), so only "near zero"
    ("blue", 0.15),  # the colour the model draws most for these seeds (37.5%): the negative must take it away
])
def test_negative_prompt_steers_away_from_a_colour(negative: str, least_share_without: float) -> None:
    from difflab.eval.t2i import negative_prompt_effect

    effect = negative_prompt_effect("tiny-shapes", "a circle", negative, n=24, guidance=7.5, steps=20)
    assert effect.share_with <= 0.05 and effect.share_with <= effect.share_without, effect.table()
    assert effect.share_without >= least_share_without, effect.table()
