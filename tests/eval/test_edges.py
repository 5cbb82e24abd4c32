"""Edge F1 against hand-made edge maps whose precision, recall and F1 are counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from difflab.eval.edges import canny_edges, edge_f1, edge_mask, image_edge_f1


def _line(row: int, start: int = 2, stop: int = 18, size: int = 20) -> np.ndarray:
    edges = np.zeros((size, size), dtype=bool)
    edges[row, start:stop] = True
    return edges


def test_identical_maps_score_one():
    score = edge_f1(_line(5), _line(5), tolerance=0)
    assert (score.precision, score.recall, score.f1) == (1.0, 1.0, 1.0)


def test_a_one_pixel_shift_is_matched_only_within_tolerance():
    assert edge_f1(_line(6), _line(5), tolerance=1).f1 == 1.0
    assert edge_f1(_line(6), _line(5), tolerance=0.5).f1 == 0.0
    assert edge_f1(_line(7), _line(5), tolerance=1.5).f1 == 0.0  # 2 px away
    assert edge_f1(_line(7), _line(5), tolerance=2).f1 == 1.0


def test_half_of_the_control_found_gives_recall_one_half():
    # output: 8 of the control's 16 pixels. P = 8/8, R = 8/16, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    score = edge_f1(_line(5, 2, 10), _line(5, 2, 18), tolerance=0)
    assert score.precision == 1.0 and score.recall == 0.5
    assert score.f1 == pytest.approx(2 / 3)


def test_extra_output_edges_lower_precision():
    # output: the control's 16 pixels plus 16 unrelated ones far away. P = 16/32, R = 1, F1 = 2/3
    output = _line(5) | _line(15)
    score = edge_f1(output, _line(5), tolerance=2)
    assert (score.precision, score.recall) == (0.5, 1.0)
    assert score.f1 == pytest.approx(2 / 3)


def test_tolerance_reaches_diagonal_neighbours_at_sqrt_two():
    output, control = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    output[1, 1], control[2, 2] = True, True
    assert edge_f1(output, control, tolerance=1).f1 == 0.0
    assert edge_f1(output, control, tolerance=1.5).f1 == 1.0


def test_empty_maps():
    empty = np.zeros((8, 8), bool)
    assert edge_f1(empty, empty).f1 == 1.0
    assert edge_f1(empty, _line(3, size=8, stop=6)).f1 == 0.0
    assert edge_f1(_line(3, size=8, stop=6), empty).f1 == 0.0


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="output: edge maps must have the same shape"):
        edge_f1(np.zeros((4, 4), bool), np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="tolerance"):
        edge_f1(np.zeros((4, 4), bool), np.zeros((4, 4), bool), tolerance=-1)


def test_an_image_scores_one_against_its_own_canny_map_and_low_against_a_moved_square():
    def square(left: int) -> Image.Image:
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[8:24, left:left + 16] = 255
        return Image.fromarray(pixels)

    control = Image.fromarray((canny_edges(square(8)) * 255).astype(np.uint8))
    assert edge_mask(control).sum() > 40
    assert image_edge_f1(square(8), control).f1 == 1.0
    moved = image_edge_f1(square(14), control, tolerance=1)  # 6 px to the right: only the top/bottom overlap
    assert 0.2 < moved.f1 < 0.8
