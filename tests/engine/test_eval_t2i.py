"""difflab.eval.t2i: the diversity measures against hand-computed values, and the measurements' plumbing through
the real engine on a tiny random pipeline (its images are noise, so only counts and bounds are checked here; the
bundled model's numbers are checked in test_bundled_tiny_shapes.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app
from difflab.data.shapes import ShapeSpec, render
from difflab.eval import t2i
from difflab.eval.adherence import score


def test_pixel_diversity_is_the_mean_pairwise_rms_distance() -> None:
    black, white = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))
    grey = Image.new("RGB", (8, 8), (51, 51, 51))  # 0.2
    assert t2i.pixel_diversity([black, black]) == 0.0
    assert t2i.pixel_diversity([black, white]) == pytest.approx(1.0)
    assert t2i.pixel_diversity([black, white, grey]) == pytest.approx((1.0 + 0.2 + 0.8) / 3)


def test_attribute_entropy_counts_the_bits_of_what_varies() -> None:
    positions = ["left", "right", "top", "bottom"]
    images = [render(ShapeSpec("circle", "red", "blue", p, "large")) for p in positions]
    report = score(images, ["a red circle"] * 4)
    assert [r.position for r in report.readings] == positions  # the analyzer reads clean renders exactly
    assert t2i.attribute_entropy(report) == pytest.approx(2.0)  # 4 equally likely positions, one background, one size
    same = score([images[0]] * 4, ["a red circle"] * 4)
    assert t2i.attribute_entropy(same) == 0.0
    mixed = score(images[:2] + [render(ShapeSpec("circle", "red", "green", "left", "small"))] * 2, ["a red circle"] * 4)
    assert t2i.attribute_entropy(mixed) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)) + 1.0 + 1.0)


def test_prompt_sets_cover_every_shape_and_colour() -> None:
    assert len(t2i.minimal_prompts()) == 32 and "a red circle" in t2i.minimal_prompts()
    prompts = t2i.full_prompts(per_pair=2)
    assert len(prompts) == 64
    from difflab.data.shapes import parse_prompt

    pairs = {(parse_prompt(p).shape, parse_prompt(p).color) for p in prompts}
    assert len(pairs) == 32


def test_measurements_run_through_the_engine(tiny_sd_folder: Path) -> None:
    model, size = str(tiny_sd_folder), dict(width=32, height=32, steps=2)
    prompts = ["a red circle", "a blue star"]
    result = t2i.guidance_sweep(model, (1.0, 5.0), seeds_per_prompt=2, prompts=prompts, **size)
    assert [r.guidance for r in result.rows] == [1.0, 5.0]
    assert all(0 <= r.shape_and_color <= 1 and r.pixel_diversity > 0 for r in result.rows)  # seeds differ
    assert all(0 <= r.attribute_entropy <= math.log2(7) + math.log2(5) + 1 for r in result.rows)
    grid = t2i.sweep_grid(result, prompts_shown=2, scale=1)
    assert grid.size[1] >= 2 * 32 and grid.size[0] >= 4 * 32  # 2 guidance rows x (2 prompts x 2 seeds)

    report, short_prompts, images = t2i.short_adherence(model, seeds_per_prompt=2, **size)
    assert len(images) == len(short_prompts) == 64 and short_prompts[:2] == ["a red circle"] * 2
    assert report.n_images == 64 and report.counts["shape"] == 64 and report.counts["position"] == 0
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # seeds 0 and 1 of one prompt

    effect = t2i.negative_prompt_effect(model, "a circle", "red", n=3, **size)
    assert effect.n == 3 and len(effect.images_with) == 3 and 0 <= effect.share_with <= 1
    # the same seeds: with guidance the negative prompt changes the images
    assert not np.array_equal(np.asarray(effect.images_with[0]), np.asarray(effect.images_without[0]))
    with pytest.raises(ValueError, match="negative must be one of the palette colours"):
        t2i.negative_prompt_effect(model, "a circle", "tartan", n=1, **size)


@pytest.mark.parametrize("arguments,message", [
    (["guidance-sweep", "--guidances", "1,x"], "guidances must be comma-separated numbers"),
    (["guidance-sweep", "--guidances", "-1"], "guidances must be comma-separated numbers in [0, 999]"),
    (["adherence", "--scheduler", "warp"], "scheduler must be one of"),
    (["adherence", "--prompts", "long"], "prompts must be full or short"),
    (["adherence", "--guidance-end", "0"], "guidance_end: Input should be greater than 0"),
    (["negative", "--negative", "tartan"], "negative must be one of the palette colours"),
    (["negative", "--model", "no-such-model"], "model must be a preset"),
])
def test_eval_cli_bad_input(tmp_path: Path, arguments: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", *arguments, "-o", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


runner = CliRunner()
