"""The learned feature space for digits (a small CNN's penultimate layer) and the scores built on it."""

import numpy as np
import pytest
import torch

from difflab.eval.digit_features import (
    FEATURE_DIM,
    feature_net,
    learned_digit_features,
    shipped_holdout_accuracy,
    train_shipped_net,
)
from difflab.eval.digits_metrics import evaluate_digit_samples, noise_floor, precision_recall_floor

from .conftest import SAMPLE_COUNT


def test_shipped_network_reads_the_real_digits(digits):
    with torch.no_grad():
        predicted = feature_net()(digits.images).argmax(1)
    assert (predicted == digits.labels).float().mean() >= 0.99  # it was trained on them
    assert shipped_holdout_accuracy() >= 0.97  # the recipe on a held-out split, recorded beside the weights


def test_features_shape_and_clipping(digits):
    features = learned_digit_features(digits.images[:5])
    assert features.shape == (5, FEATURE_DIM) and features.dtype == np.float64 and (features >= 0).all()
    beyond = digits.images[:5] * 3  # out-of-range samples are clipped to [-1, 1], as when saved as images
    np.testing.assert_array_equal(learned_digit_features(beyond), learned_digit_features(beyond.clamp(-1, 1)))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        learned_digit_features(torch.zeros(5, 8, 8))


def test_real_digits_score_like_the_floor_in_the_learned_space(real_subset):
    images, labels = real_subset
    scores = evaluate_digit_samples(images, labels)
    floor = noise_floor(SAMPLE_COUNT, space="learned")
    assert floor.space == "learned" and floor.frechet > 0
    assert scores.frechet_learned <= floor.frechet + 4 * floor.spread
    halves = precision_recall_floor()
    assert scores.precision >= halves.precision - 0.05 and scores.recall >= halves.recall - 0.05


def test_noise_falls_off_the_manifold(real_subset):
    _, labels = real_subset
    noise = torch.rand(SAMPLE_COUNT, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = evaluate_digit_samples(noise, labels)
    assert scores.frechet_learned >= 20 * noise_floor(SAMPLE_COUNT, space="learned").frechet
    assert scores.precision <= 0.05


def test_one_digit_repeated_is_precise_but_covers_little(digits, real_subset):
    """Mode collapse: 500 copies of real digits of one class lie on the manifold but cover a tenth of it."""
    _, labels = real_subset
    threes = digits.images[digits.labels == 3]
    collapsed = threes[torch.arange(SAMPLE_COUNT) % len(threes)]
    scores = evaluate_digit_samples(collapsed, labels)
    assert scores.precision >= 0.99
    assert scores.recall <= 0.15


def test_too_few_samples_for_a_manifold_give_nan(digits):
    scores = evaluate_digit_samples(digits.images[:3], digits.labels[:3])
    assert np.isnan(scores.precision) and np.isnan(scores.recall) and np.isfinite(scores.frechet_learned)


@pytest.mark.slow
def test_shipped_weights_are_the_recipe(digits):
    """Retraining (one thread, seeded) gives the shipped network's outputs: the weights are the documented
    recipe, not an unrecorded run. Equal within float noise, as other CPUs round differently."""
    retrained = train_shipped_net()
    with torch.no_grad():
        torch.testing.assert_close(retrained.features(digits.images), feature_net().features(digits.images),
                                   rtol=1e-3, atol=1e-3)
