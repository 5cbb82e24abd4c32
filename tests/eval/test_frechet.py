"""Tests for the Frechet distance: Gaussian closed forms, symmetry, zero on itself, degenerate covariances."""

import numpy as np
import pytest
from scipy import linalg

import difflab.eval.frechet as frechet_module
from difflab.eval.frechet import GaussianStats, frechet_distance, frechet_distance_from_stats


def _stats(mean, covariance) -> GaussianStats:
    return GaussianStats(np.asarray(mean, dtype=float), np.asarray(covariance, dtype=float), count=0)


def _reference_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
    """Independent route to the same number: the symmetric form Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2),
    with both roots taken by eigendecomposition of symmetric PSD matrices, not by sqrtm of a non-symmetric
    product.
    """

    def psd_sqrt(matrix):
        values, vectors = np.linalg.eigh(matrix)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_1 = psd_sqrt(sigma_1)
    cross = psd_sqrt(root_1 @ sigma_2 @ root_1)
    difference = mu_1 - mu_2
    return float(difference @ difference + np.trace(sigma_1 + sigma_2 - 2 * cross))


def _random_covariance(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_one_dimensional_closed_form():
    # N(0, 1) vs N(3, 2^2): (0 - 3)^2 + (1 - 2)^2 = 10
    assert frechet_distance_from_stats(_stats([0.0], [[1.0]]), _stats([3.0], [[4.0]])) == pytest.approx(10.0)


def test_diagonal_gaussians_match_closed_form():
    # Diagonal covariances commute, so Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (s1 - s2)^2 in standard deviations.
    rng = np.random.default_rng(1)
    mu_1, mu_2 = rng.normal(size=6), rng.normal(size=6)
    std_1, std_2 = rng.uniform(0.2, 3, size=6), rng.uniform(0.2, 3, size=6)
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum((std_1 - std_2) ** 2)
    got = frechet_distance_from_stats(_stats(mu_1, np.diag(std_1**2)), _stats(mu_2, np.diag(std_2**2)))
    assert got == pytest.approx(expected, rel=1e-10)


def test_diagonal_gaussians_from_samples_approach_closed_form():
    rng = np.random.default_rng(2)
    mu_1, mu_2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    std_1, std_2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    samples_1 = mu_1 + std_1 * rng.normal(size=(50_000, 3))
    samples_2 = mu_2 + std_2 * rng.normal(size=(50_000, 3))
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum((std_1 - std_2) ** 2)  # 5 + 1.25
    assert frechet_distance(samples_1, samples_2) == pytest.approx(expected, rel=0.02)


def test_full_covariances_match_symmetric_form():
    rng = np.random.default_rng(3)
    mu_1, mu_2 = rng.normal(size=10), rng.normal(size=10)
    sigma_1, sigma_2 = _random_covariance(rng, 10), _random_covariance(rng, 10)
    got = frechet_distance_from_stats(_stats(mu_1, sigma_1), _stats(mu_2, sigma_2))
    assert got == pytest.approx(_reference_distance(mu_1, sigma_1, mu_2, sigma_2), rel=1e-8)


def test_symmetric():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 5))
    b = rng.normal(loc=0.5, scale=2.0, size=(300, 5)) @ rng.normal(size=(5, 5))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)


def test_shifting_a_set_costs_the_squared_shift():
    features = np.random.default_rng(5).normal(size=(100, 4))
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert frechet_distance(features, features + shift) == pytest.approx(shift @ shift, rel=1e-6)


def test_singular_covariances_give_a_finite_distance():
    # Fewer samples than dimensions and a constant coordinate (like a digit pixel that is always 0).
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(10, 20)), rng.normal(size=(12, 20))
    a[:, 0] = b[:, 0] = 0.0
    distance = frechet_distance(a, b)
    assert np.isfinite(distance) and distance > 0


def test_eps_offset_fallback_stays_close(monkeypatch):
    # Force the pytorch-fid fallback path: an eps on the diagonals moves the distance by O(eps * D).
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 6)), rng.normal(loc=0.3, size=(200, 6))
    exact = frechet_distance(a, b)
    monkeypatch.setattr(frechet_module, "_sqrtm_checked", lambda matrix: None)
    assert frechet_distance(a, b) == pytest.approx(exact, abs=1e-4)


def test_large_imaginary_part_raises(monkeypatch):
    monkeypatch.setattr(frechet_module, "_sqrtm_checked", lambda matrix: np.eye(len(matrix)) * (1 + 1j))
    with pytest.raises(ValueError, match="imaginary"):
        rng = np.random.default_rng(8)
        frechet_distance(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)))


def test_tiny_imaginary_part_is_dropped(monkeypatch):
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    exact = frechet_distance(a, b)
    monkeypatch.setattr(frechet_module, "_sqrtm_checked", lambda matrix: linalg.sqrtm(matrix) + 1e-9j)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    ("features_1", "features_2", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "dimensions differ"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2"),
        (np.zeros(5), np.zeros((5, 1)), "2-D"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "NaN"),
    ],
)
def test_bad_input_raises(features_1, features_2, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(features_1, features_2)
