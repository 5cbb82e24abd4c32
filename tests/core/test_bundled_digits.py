"""The shipped digits model draws the digits it is asked for (checked by an independent classifier)."""

from __future__ import annotations

import torch

from difflab.cli import bundled_digits_checkpoint
from difflab.core.checkpoint import load_model
from difflab.core.generate import SampleRequest, sample_images
from difflab.eval.digits_metrics import evaluate_digit_samples


def test_bundled_model_loads_and_draws_the_asked_digits() -> None:
    model = load_model(bundled_digits_checkpoint())
    assert model.spec.class_names == tuple("0123456789") and model.spec.training["steps_done"] == 4000
    labels = tuple(digit for digit in range(10) for _ in range(8))
    images = sample_images(model, SampleRequest(labels=labels, sampler="dpmpp-2m", steps=20, guidance=3.0, seed=1000))
    scores = evaluate_digit_samples(images, torch.tensor(labels))
    assert scores.accuracy >= 0.9, scores
