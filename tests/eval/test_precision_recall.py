"""Improved precision and recall (Kynkaanniemi et al. 2019) on cases small enough to work out by hand."""

import numpy as np
import pytest

from difflab.eval.precision_recall import knn_radii, precision_recall


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]  # 1-D points as (N, 1) features


def test_knn_radii_skip_the_point_itself():
    points = column(0, 1, 3, 7)
    # k=1: nearest other point; k=2: second nearest (for 3: others at 3, 2, 4 -> 2, 3)
    np.testing.assert_allclose(knn_radii(points, 1), [1, 1, 2, 4])
    np.testing.assert_allclose(knn_radii(points, 2), [3, 2, 3, 6])


def test_knn_radii_in_two_dimensions():
    square = np.array([[0, 0], [3, 0], [0, 4], [3, 4]], dtype=float)  # a 3x4 rectangle: sides 3, 4, diagonal 5
    np.testing.assert_allclose(knn_radii(square, 1), [3, 3, 3, 3])
    np.testing.assert_allclose(knn_radii(square, 3), [5, 5, 5, 5])


def test_one_outlier_halves_precision_and_recall_sees_everything():
    real = column(0, 1, 2, 3)  # k=1 balls of radius 1 around each
    generated = column(0.5, 10)  # 0.5 is inside, 10 is not; each generated ball has radius 9.5
    result = precision_recall(real, generated, k=1)
    assert result.precision == 0.5
    assert result.recall == 1.0  # every real point is within 9.5 of 0.5


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = column(*range(10))  # radius 1 each
    generated = column(0, 0.1, 0.2, 0.3)  # all near the real 0; k=1 radii 0.1
    result = precision_recall(real, generated, k=1)
    assert result.precision == 1.0
    assert result.recall == pytest.approx(0.1)  # only the real 0 lies in a generated ball


def test_same_set_is_perfect_and_disjoint_sets_score_zero():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 4))
    assert precision_recall(points, points) == precision_recall(points, points.copy())
    same = precision_recall(points, points)
    assert (same.precision, same.recall, same.k) == (1.0, 1.0, 3)
    far = precision_recall(points, points + 100.0)
    assert (far.precision, far.recall) == (0.0, 0.0)


def test_blocks_do_not_change_the_answer(monkeypatch):
    from difflab.eval import precision_recall as module

    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(70, 3)), rng.normal(0.5, 1.2, size=(40, 3))
    whole = precision_recall(real, generated)
    monkeypatch.setattr(module, "BLOCK_ROWS", 7)
    assert precision_recall(real, generated) == whole
    assert 0 < whole.precision < 1 and 0 < whole.recall < 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        precision_recall(column(0, 1, 2, 3), column(0, 1, 2, 3), k=4)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="generated features contain NaN"):
        precision_recall(np.zeros((5, 2)), np.full((5, 2), np.nan))
