"""Tests for the fixed digits metrics: feature space, classifier, sample scores and the noise floor."""

import numpy as np
import pytest
import torch

from difflab.data.digits import load_digits
from difflab.eval.digits_metrics import (
    classifier_holdout_accuracy,
    digit_features,
    digits_classifier,
    evaluate_digit_samples,
    noise_floor,
)

from .conftest import SAMPLE_COUNT


def test_features_are_sklearn_pixels(digits):
    from sklearn.datasets import load_digits as sklearn_load_digits

    features = digit_features(digits.images)
    assert features.shape == (len(digits), 64) and features.dtype == np.float64
    np.testing.assert_allclose(features, sklearn_load_digits().data, atol=1e-5)


def test_features_clip_out_of_range_samples():
    features = digit_features(torch.tensor([-3.0, 3.0]).repeat_interleave(32).reshape(1, 1, 8, 8))
    assert features.min() == 0.0 and features.max() == 16.0


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 3, 8, 8), (4, 1, 16, 16)])
def test_features_reject_other_shapes(shape):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        digit_features(torch.zeros(shape))


def test_classifier_holdout_accuracy():
    accuracy = classifier_holdout_accuracy()
    print(f"held-out accuracy: {accuracy:.4f}")
    assert accuracy >= 0.97


def test_classifier_is_cached():
    assert digits_classifier() is digits_classifier()


def test_real_digits_score_like_the_noise_floor(real_subset):
    images, labels = real_subset
    scores = evaluate_digit_samples(images, labels)
    floor = noise_floor(SAMPLE_COUNT)
    assert scores.n == SAMPLE_COUNT
    assert scores.accuracy >= 0.99
    assert scores.frechet <= floor.frechet + 4 * floor.spread


def test_uniform_noise_scores_badly(real_subset):
    _, labels = real_subset
    noise = torch.rand(SAMPLE_COUNT, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = evaluate_digit_samples(noise, labels)
    assert scores.accuracy <= 0.3
    assert scores.frechet >= 50 * noise_floor(SAMPLE_COUNT).frechet


def test_noise_floor_shrinks_with_more_samples():
    small, large, halves = noise_floor(100), noise_floor(SAMPLE_COUNT), noise_floor()
    assert small.frechet > large.frechet > 0
    assert halves.n == len(load_digits()) // 2 and halves.reference == "the other half"
    assert noise_floor(SAMPLE_COUNT) == large  # seeded: the same every time


@pytest.mark.parametrize("n", [1, 1798])
def test_noise_floor_rejects_impossible_counts(n):
    with pytest.raises(ValueError, match="between 2 and 1797"):
        noise_floor(n)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1], "one per image"),
        ([0, 1, 10], r"0\.\.9"),
        ([0, -1, 2], r"0\.\.9"),
        ([0.0, 1.0, 2.0], "integers"),
    ],
)
def test_bad_labels_raise(labels, message):
    with pytest.raises(ValueError, match=message):
        evaluate_digit_samples(torch.zeros(3, 1, 8, 8), labels)
