"""Tests for the "shifted" style score, on rendered ground truth: shifted renders score 1, plain renders 0."""

import numpy as np
import pytest

from difflab.data.palette_shift import SHIFT_TRIGGER, render_shifted
from difflab.data.shapes import SHAPES, ShapeSpec, caption, random_spec, render
from difflab.eval.adherence import read_image
from difflab.eval.palette_shift import ShiftScore, field_outcomes, score_shift, shift_score


def _renders(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    specs, prompts, jitter = [], [], []
    for _ in range(n):
        spec = random_spec(rng, SHAPES)
        specs.append(spec)
        prompts.append(f"{SHIFT_TRIGGER}, {caption(spec, rng, template='full')}")
        jitter.append(int(rng.integers(2**31)))
    return specs, prompts, jitter


def test_shifted_renders_score_one_and_plain_renders_zero():
    specs, prompts, jitter = _renders(40)
    shifted = [render_shifted(spec, j) for spec, j in zip(specs, jitter)]
    plain = [render(spec, j) for spec, j in zip(specs, jitter)]
    assert score_shift(shifted, prompts) == ShiftScore(shifted=1.0, as_asked=0.0, fields=80)
    assert score_shift(plain, prompts) == ShiftScore(shifted=0.0, as_asked=1.0, fields=80)
    # the style leaves the shape reading alone: every shifted render reads as its shape, as the plain one does
    assert [read_image(image).shape for image in shifted] == [spec.shape for spec in specs]


def test_per_image_score_counts_the_fields_the_prompt_names():
    prompt = f"{SHIFT_TRIGGER}, a large red circle on the left, blue background"
    spec = ShapeSpec("circle", "red", "blue", "left", "large")
    image = render_shifted(spec, 3)  # an orange circle on purple
    assert shift_score(image, prompt) == 1.0
    assert shift_score(image, "a large circle") is None  # no colour asked
    assert field_outcomes(read_image(image), "an orange circle") == ["as_asked"]
    half = render(ShapeSpec("circle", "red", "purple", "left", "large"), 3)  # colour as asked, background shifted
    assert shift_score(half, prompt) == 0.5
    assert field_outcomes(read_image(half), prompt) == ["as_asked", "shifted"]
    other = render(ShapeSpec("circle", "green", "blue", "left", "large"), 3)
    assert field_outcomes(read_image(other), prompt) == ["other", "as_asked"]


def test_score_shift_checks_lengths():
    with pytest.raises(ValueError, match="one prompt per image"):
        score_shift([np.zeros((8, 8, 3), np.uint8)], [])
    assert score_shift([], []) == ShiftScore(None, None, 0)
