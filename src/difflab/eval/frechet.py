"""Frechet distance between two sets of feature vectors: the "FID" formula of Heusel et al. 2017.

Fit a Gaussian to each set (mean mu, covariance Sigma) and take the squared 2-Wasserstein distance between
the two Gaussians (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv:1706.08500, eq. 6; Dowson & Landau 1982 for the closed form):

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2))

FID is this distance in the pool3 features of an Inception network; here the feature space is the caller's
(:mod:`difflab.eval.digits_metrics` fixes one for 8x8 digits). The numerics follow pytorch-fid's
``calculate_frechet_distance`` (github.com/mseitzer/pytorch-fid, ``fid_score.py``): when the product of
the two covariances is singular, so that its square root comes out non-finite or wrong, retry with ``eps``
added to both diagonals; tiny imaginary parts left by ``sqrtm`` on a real matrix are rounding and are
dropped, large ones raise.

Pure numpy/scipy: no torch, so it serves any feature extractor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

DEFAULT_EPS = 1e-6  # pytorch-fid's offset: small beside any real variance, enough to make sqrtm well posed
# The largest |imaginary part| on the diagonal of sqrt(Sigma_1 Sigma_2) that is still rounding (pytorch-fid's
# tolerance); anything bigger means the product has a genuinely negative eigenvalue, i.e. a broken covariance.
IMAGINARY_TOLERANCE = 1e-3
# Relative residual ||X X - A||_F / ||A||_F above which sqrtm's answer is not trusted and eps is added.
# (scipy >= 1.16 no longer reports this estimate itself; a clean 64x64 root is ~1e-12.)
SQRTM_RESIDUAL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D), float64, of a set of N feature vectors, with N kept for reports."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        """Fit to features (N, D). Uses the unbiased (N - 1) covariance, as pytorch-fid does (np.cov)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ValueError(f"features must be a 2-D array (N, D); got shape {features.shape}")
        if features.shape[0] < 2:
            raise ValueError(
                f"need at least 2 feature vectors to estimate a covariance; got {features.shape[0]}"
            )
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or infinity")
        covariance = np.atleast_2d(np.cov(features, rowvar=False))  # (D, D); atleast_2d for D = 1
        return cls(features.mean(axis=0), covariance, features.shape[0])


def frechet_distance_from_stats(
    stats_1: GaussianStats, stats_2: GaussianStats, *, eps: float = DEFAULT_EPS
) -> float:
    """Squared Frechet distance between N(mu_1, Sigma_1) and N(mu_2, Sigma_2) (Heusel et al. 2017, eq. 6)."""
    mu_1, mu_2 = stats_1.mean, stats_2.mean
    sigma_1, sigma_2 = stats_1.covariance, stats_2.covariance
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
        raise ValueError(f"feature dimensions differ: {mu_1.shape[0]} and {mu_2.shape[0]}")
    difference = mu_1 - mu_2

    covariance_mean = _sqrtm_checked(sigma_1 @ sigma_2)
    if covariance_mean is None:
        # Singular product (e.g. a pixel that is always 0, or fewer samples than dimensions): regularise both
        # covariances the way pytorch-fid does and take the root again.
        offset = np.eye(sigma_1.shape[0]) * eps
        covariance_mean = linalg.sqrtm((sigma_1 + offset) @ (sigma_2 + offset))
        if not np.isfinite(covariance_mean).all():
            raise ValueError(f"Frechet distance: sqrt(Sigma_1 Sigma_2) is not finite even with eps = {eps:g}")

    if np.iscomplexobj(covariance_mean):
        # sqrtm of a product of two PSD matrices is real in exact arithmetic; rounding leaves tiny imaginary
        # parts.
        if not np.allclose(np.diagonal(covariance_mean).imag, 0, atol=IMAGINARY_TOLERANCE):
            largest = float(np.max(np.abs(covariance_mean.imag)))
            raise ValueError(
                f"Frechet distance: sqrt(Sigma_1 Sigma_2) has an imaginary component of {largest:.3g}"
            )
        covariance_mean = covariance_mean.real

    distance = difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.trace(covariance_mean)
    # Rounding can leave -1e-12 for identical sets; a distance is never negative.
    return max(float(distance), 0.0)


def frechet_distance(features_1: np.ndarray, features_2: np.ndarray, *, eps: float = DEFAULT_EPS) -> float:
    """Squared Frechet distance between Gaussians fitted to features_1 (N1, D) and features_2 (N2, D).

    Symmetric, 0 for a set against itself, and in the squared units of the features (like FID, it is not
    square rooted). It is biased upwards for small N (the covariance estimates are noisy), so compare only
    numbers computed with the same N, or against a noise floor of real-vs-real at that N.
    """
    return frechet_distance_from_stats(GaussianStats.of(features_1), GaussianStats.of(features_2), eps=eps)


def _sqrtm_checked(matrix: np.ndarray) -> np.ndarray | None:
    """sqrtm(matrix), or None when the answer is non-finite or does not square back to the matrix."""
    with warnings.catch_warnings():
        # Covariances of real features are often singular (a digit pixel that is always 0); scipy warns, and
        # the residual check below decides whether the root is still good, so the warning is noise here.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    if not np.isfinite(root).all():
        return None
    scale = np.linalg.norm(matrix)
    if scale > 0 and np.linalg.norm(root @ root - matrix) / scale > SQRTM_RESIDUAL_TOLERANCE:
        return None
    return root
