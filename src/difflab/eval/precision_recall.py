"""Improved precision and recall of generated samples (Kynkaanniemi et al. 2019, arXiv:1904.06991, sec. 2).

One Frechet distance mixes two failures: samples that do not look real (low fidelity) and real variety the
samples never reach (low coverage). Precision and recall separate them by estimating each set's manifold in a
feature space as a union of balls, one around every point, reaching to its k-th nearest neighbour in its own set:

    manifold(Phi) = union over phi in Phi of ball(phi, ||phi - NN_k(phi, Phi)||)
    precision = share of generated points inside manifold(real)       (eq. 2: "are the samples realistic?")
    recall    = share of real points inside manifold(generated)       (eq. 3: "is the real variety covered?")

A point's own distance 0 is not counted as a neighbour (k = 1 means the nearest *other* point). The paper uses
k = 3 on VGG-16 features of 50k images per set; here the caller picks the features. Both numbers depend on the
set sizes (more points, smaller balls), so compare rows computed with the same sizes, and against real-vs-real.

Pure numpy, exact (no approximate neighbour search); distances are computed in row blocks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_K = 3  # the paper's choice (sec. 2.1): small enough to follow the manifold, large enough to be stable
BLOCK_ROWS = 1024  # rows of the distance matrix held at once: 1024 x N float64


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of generated samples within the real manifold, 0..1
    recall: float  # share of real samples within the generated manifold, 0..1
    k: int


def _checked(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D); got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinity")
    return features


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), from ||a||^2 + ||b||^2 - 2 a.b, clipped at 0 against rounding."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def knn_radii(features: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Distance from every point (N, D) to its k-th nearest other point in the same set: (N,)."""
    features = _checked(features, "features")
    if not 1 <= k < len(features):
        raise ValueError(f"k must be between 1 and {len(features) - 1} (the set has {len(features)} points); got {k}")
    radii = np.empty(len(features))
    for start in range(0, len(features), BLOCK_ROWS):
        block = _pairwise_distances(features[start : start + BLOCK_ROWS], features)  # (rows, N)
        # column k of the sorted row: column 0 is the point itself (distance 0)
        radii[start : start + len(block)] = np.partition(block, k, axis=1)[:, k]
    return radii


def coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` (M, D) inside at least one ball ``(manifold[i], radii[i])`` (boundary included)."""
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), BLOCK_ROWS):
        block = _pairwise_distances(points[start : start + BLOCK_ROWS], manifold)  # (rows, N)
        inside[start : start + len(block)] = (block <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, generated: np.ndarray, *, k: int = DEFAULT_K) -> PrecisionRecall:
    """Improved precision and recall of ``generated`` (M, D) against ``real`` (N, D) features, k-NN manifolds."""
    real, generated = _checked(real, "real features"), _checked(generated, "generated features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, generated {generated.shape[1]}")
    precision = coverage(generated, real, knn_radii(real, k))
    recall = coverage(real, generated, knn_radii(generated, k))
    return PrecisionRecall(precision=precision, recall=recall, k=k)
