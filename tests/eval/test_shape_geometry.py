"""The geometry analyzer (issue 23's rules) on shapes drawn with cv2.fillPoly: true ones pass, lumpy and concave
ones fail, and the renders the model is trained on pass at both sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from difflab.data.shapes import BASE_SHAPES, PALETTE, ShapeSpec, random_spec, render
from difflab.eval.shape_geometry import read_geometry, rule_holds, score_geometry

SIDE, SUPER = 64, 8  # drawn at 8x and area-averaged down: anti-aliased edges like the renderer's


def draw(points_of_unit_outline: np.ndarray, radius: float, color: str = "yellow", background: str = "black",
         centre: tuple[float, float] = (32.0, 32.0)) -> np.ndarray:
    """(64, 64, 3) uint8 picture of an outline given as (N, 2) unit-radius points, filled with cv2.fillPoly."""
    canvas = np.zeros((SIDE * SUPER, SIDE * SUPER, 3), np.uint8)
    canvas[:] = PALETTE[background]
    points = (np.asarray(centre) + radius * points_of_unit_outline) * SUPER
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], PALETTE[color], lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def polar(radius_of_angle, n: int = 360) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius_of_angle(theta)
    return np.stack([r * np.sin(theta), -r * np.cos(theta)], axis=1)


def regular(n: int, phase: float = 0.0) -> np.ndarray:
    theta = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.sin(theta), -np.cos(theta)], axis=1)


def star(inner: float = 0.45, tips: int = 5) -> np.ndarray:
    outer, valleys = regular(tips), inner * regular(tips, np.pi / tips)
    return np.stack([outer, valleys], axis=1).reshape(-1, 2)


def bowed(n: int, depth: float, per_side: int = 24) -> np.ndarray:
    """An n-gon whose sides bow inwards (depth > 0, a fraction of the radius): the 'three-armed' triangle."""
    corners = regular(n)
    points = []
    for k in range(n):
        a, b = corners[k], corners[(k + 1) % n]
        for t in np.linspace(0, 1, per_side, endpoint=False):
            point = (1 - t) * a + t * b
            points.append(point * (1 - depth * np.sin(np.pi * t)))  # pulled towards the centre mid-side
    return np.array(points)


TRUE_SHAPES = {
    "circle": lambda: polar(lambda t: np.ones_like(t)),
    "square": lambda: regular(4, np.pi / 4),
    "triangle": lambda: regular(3),
    "star": lambda: star(),
}
RADII = {"small": 9.0, "large": 16.0}  # px; the renderer's ranges are 8.3-10.2 and 14.7-17.3


@pytest.mark.parametrize("size", RADII)
@pytest.mark.parametrize("shape", BASE_SHAPES)
def test_a_true_shape_meets_its_rule_and_no_other(shape, size):
    reading = read_geometry(draw(TRUE_SHAPES[shape](), RADII[size]))
    assert reading.shape == shape, reading
    assert [name for name in BASE_SHAPES if reading.passes(name)] == [shape]
    assert reading.color == "yellow" and reading.size == size


# Each of these is what the issue saw the shipped model draw; each must fail the rule of the shape it imitates.
LUMPY = {
    # Lumps of amplitude a fill (1 + a^2 / 2) / (1 + a)^2 of the enclosing circle: the rule's 0.88 sits at a ~ 0.065,
    # so a circle with 9% 6-fold lumps (fill 0.84; a hexagon's is 0.83) is "lumpy enough to read as a hexagon".
    "circle, 6-fold lumps": ("circle", lambda: polar(lambda t: 1 + 0.09 * np.cos(6 * t))),
    # 4-fold lumps: a rounded square
    "circle, 4-fold lumps": ("circle", lambda: polar(lambda t: 1 + 0.09 * np.cos(4 * t))),
    # a triangle with concave sides: three-armed
    "triangle, concave sides": ("triangle", lambda: bowed(3, 0.2)),
    "square, concave sides": ("square", lambda: bowed(4, 0.15)),
    # a five-lobed blob: a star without valleys
    "star, five shallow lobes": ("star", lambda: polar(lambda t: 1 + 0.12 * np.cos(5 * t))),
    "star, four tips": ("star", lambda: star(tips=4)),
}


@pytest.mark.parametrize("size", RADII)
@pytest.mark.parametrize("name", LUMPY)
def test_lumpy_and_concave_shapes_fail_the_rule(name, size):
    shape, outline = LUMPY[name]
    reading = read_geometry(draw(outline(), RADII[size]))
    assert not reading.passes(shape), reading
    assert reading.shape != shape


def test_the_rules_thresholds_are_the_issues():
    assert rule_holds("triangle", 0.93, 3, 0.4, 0) and not rule_holds("triangle", 0.929, 3, 0.4, 0)
    assert not rule_holds("triangle", 0.99, 4, 0.4, 0) and rule_holds("square", 0.99, 4, 0.6, 0)
    assert rule_holds("circle", 0.95, 8, 0.88, 0) and not rule_holds("circle", 0.95, 8, 0.879, 0)
    assert not rule_holds("circle", 0.949, 8, 0.95, 0)
    assert rule_holds("star", 0.79, 10, 0.4, 5) and not rule_holds("star", 0.8, 10, 0.4, 5)
    assert not rule_holds("star", 0.6, 10, 0.4, 4)
    with pytest.raises(ValueError, match="shape must be one of"):
        rule_holds("hexagon", 1.0, 6, 0.8, 0)


def test_the_training_renders_pass_at_both_sizes():
    rng = np.random.default_rng(3)
    for _ in range(48):
        spec = random_spec(rng)
        reading = read_geometry(render(spec, rng))
        assert reading.passes(spec.shape) and reading.color == spec.color and reading.size == spec.size, (spec, reading)


def test_a_hexagon_is_none_of_the_base_shapes():
    spec = ShapeSpec("hexagon", "red", "blue", "centre", "small")
    assert read_geometry(render(spec, 0)).shape is None


def test_a_blank_picture_reads_as_nothing():
    reading = read_geometry(np.full((64, 64, 3), 40, np.uint8))
    assert reading.shape is None and reading.color is None


def test_score_groups_by_asked_size_and_shape():
    images = [draw(TRUE_SHAPES["circle"](), 16.0, "red", "blue"),  # right
              draw(LUMPY["circle, 6-fold lumps"][1](), 9.0, "red", "blue"),  # lumpy: shape wrong
              draw(TRUE_SHAPES["square"](), 9.0, "green", "white"),  # colour wrong
              draw(TRUE_SHAPES["star"](), 16.0, "white", "black")]  # short prompt: size measured (large)
    prompts = ["a large red circle in the centre, blue background", "a small red circle",
               "a small red square", "a white star"]
    summary = score_geometry(images, prompts).summary()
    assert summary["n"] == 4 and summary["n large"] == 2 and summary["n small"] == 2
    assert summary["shape+color large"] == 1.0 and summary["shape+color small"] == 0.0
    assert summary["color"] == 0.75 and summary["shape"] == 0.75
    assert summary["per shape"] == {"circle": 0.5, "square": 0.0, "triangle": None, "star": 1.0}
    with pytest.raises(ValueError, match="one prompt per image"):
        score_geometry(images, prompts[:2])
