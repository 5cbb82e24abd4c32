"""Tests for the deterministic adherence analyzer, measured on rendered ground-truth images."""

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from difflab.data.shapes import (
    COLORS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    SPEC_FIELDS,
    ShapeSpec,
    ShapesDataset,
    caption,
    random_spec,
    render,
)
from difflab.eval.adherence import read_image, score, to_rgb_array

# Accuracy asked of the analyzer on clean renders. It measures 100% on every field over
# thousands of random specs; the slack is only for a rare unlucky jitter.
REQUIRED_ACCURACY = {"shape": 0.97, "color": 0.99, "background": 0.99, "position": 0.99, "size": 0.97}


def _accuracy(specs, readings):
    pairs = list(zip(specs, readings))
    return {f: float(np.mean([getattr(r, f) == getattr(s, f) for s, r in pairs])) for f in SPEC_FIELDS}


def _degrade(image, rng, noise, blur):
    """Blur and add pixel noise, a stand-in for a generated image's imperfections."""
    array = np.asarray(image, dtype=float)
    if blur:
        array = ndimage.gaussian_filter(array, (blur, blur, 0))
    return np.clip(array + rng.normal(0, noise, array.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rendered():
    """500 random jittered specs over all five shapes, with their images and readings."""
    rng = np.random.default_rng(1234)
    specs = [random_spec(rng, SHAPES) for _ in range(500)]
    images = [render(spec, rng) for spec in specs]
    return specs, images, [read_image(image) for image in images]


def test_reads_random_renders_accurately(rendered):
    specs, _, readings = rendered
    accuracy = _accuracy(specs, readings)
    print("analyzer accuracy on 500 clean renders:", {f: f"{100 * a:.1f}%" for f, a in accuracy.items()})
    for name, required in REQUIRED_ACCURACY.items():
        assert accuracy[name] >= required, (name, accuracy[name])
    assert np.median([r.confidence for r in readings]) > 0.5


def test_reads_an_image_file_as_it_reads_the_image(tmp_path):
    spec = ShapeSpec("star", "green", "white", "left", "large")
    image = render(spec, np.random.default_rng(0), 64)
    image.save(tmp_path / "star.png")
    assert read_image(tmp_path / "star.png") == read_image(image) == read_image(str(tmp_path / "star.png"))
    assert read_image(tmp_path / "star.png").shape == "star"


@pytest.mark.parametrize("shape", ["hexagon", "circle", "star", "triangle", "square"])
def test_small_shapes_are_told_apart(shape):
    # Small is the hard case, and hexagon vs circle the hard pair: a small hexagon's outline
    # stays within 1.1 px of its circumcircle.
    rng = np.random.default_rng(SHAPES.index(shape))
    specs = []
    for position in rng.choice(POSITIONS, 40):
        color, background = rng.choice(COLORS, 2, replace=False)
        specs.append(ShapeSpec(shape, str(color), str(background), str(position), "small"))
    readings = [read_image(render(spec, rng)) for spec in specs]
    accuracy = _accuracy(specs, readings)
    assert accuracy["shape"] >= 0.97 and accuracy["size"] >= 0.97, accuracy


def test_every_shape_position_size_and_colour_pair():
    for seed, (shape, position, size) in enumerate(itertools.product(SHAPES, POSITIONS, SIZES)):
        spec = ShapeSpec(shape, "red", "white", position, size)
        reading = read_image(render(spec, rng=seed))
        assert (reading.shape, reading.position, reading.size) == (shape, position, size)
    for color, background in itertools.permutations(COLORS, 2):  # includes the closest pairs
        reading = read_image(render(ShapeSpec("hexagon", color, background, "centre", "small"), rng=5))
        assert (reading.shape, reading.color, reading.background) == ("hexagon", color, background)


def test_robust_to_blur_and_noise():
    # Generated images are soft and noisy; the analyzer must not depend on crisp renders.
    rng = np.random.default_rng(99)
    specs = [random_spec(rng, SHAPES) for _ in range(200)]
    readings = [read_image(_degrade(render(spec, rng), rng, noise=10, blur=1.0)) for spec in specs]
    accuracy = _accuracy(specs, readings)
    print("analyzer accuracy on 200 blurred+noisy renders:", accuracy)
    assert min(accuracy.values()) >= 0.97, accuracy


def test_noise_and_blank_images_are_not_read_as_shapes():
    rng = np.random.default_rng(0)
    uniform_noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    gray_noise = np.clip(128 + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
    red_noise = np.clip(np.array(PALETTE["red"]) + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    for image in (uniform_noise, gray_noise, red_noise):
        reading = read_image(image)
        assert reading.shape is None and reading.color is None and reading.confidence == 0.0
    assert read_image(uniform_noise).background is None
    for color in COLORS:
        blank = np.full((64, 64, 3), PALETTE[color], dtype=np.uint8)
        reading = read_image(blank)
        assert reading.background == color  # the background is real; nothing is drawn on it
        assert (reading.shape, reading.color, reading.position, reading.size) == (None,) * 4
        assert reading.confidence == 0.0


def test_accepts_pil_uint8_and_model_tensors():
    dataset = ShapesDataset(3, seed=4, shapes=SHAPES)
    for index in range(3):
        item = dataset[index]
        spec, _, rng = dataset.spec_and_caption(index)
        image = render(spec, rng)
        assert np.allclose(to_rgb_array(item["image"]), np.asarray(image), atol=1e-3)
        from_tensor = read_image(item["image"])  # (3, H, W) float in [-1, 1]
        from_pil, from_uint8 = read_image(image), read_image(np.asarray(image))
        assert from_pil == from_uint8
        # The float32 round trip moves values by ~1e-5, so only the confidences may differ, and barely.
        assert [getattr(from_tensor, f) for f in SPEC_FIELDS] == [getattr(from_pil, f) for f in SPEC_FIELDS]
        assert from_tensor.confidence == pytest.approx(from_pil.confidence, abs=1e-3)
        assert from_tensor.shape == spec.shape and from_tensor.color == spec.color
    with pytest.raises(ValueError, match="shape"):
        to_rgb_array(np.zeros((64, 64)))
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_array(np.zeros((64, 64, 3), dtype=np.int32))


def test_score_counts_only_fields_the_prompt_asks_for(rendered):
    specs, images, _ = rendered
    specs, images = specs[:60], images[:60]
    rng = np.random.default_rng(0)
    prompts = [caption(spec, rng) for spec in specs]
    report = score(images, prompts)
    assert report.n_images == 60 and len(report.readings) == 60
    assert report.accuracy["shape"] == 1.0 and report.shape_and_color_accuracy == 1.0
    assert report.counts["shape"] == 60  # every phrasing names the shape
    # some phrasings omit colour or size, and those are not counted
    assert report.counts["color"] == report.counts["shape+color"] < 60 and report.counts["size"] < 60

    minimal = score(images[:5], [caption(s, None, template="minimal") for s in specs[:5]])
    assert minimal.accuracy["position"] is None and minimal.counts["position"] == 0

    # Asking for the wrong colour on every image: colour and the combined score drop to 0,
    # shape stays perfect.
    wrong_specs = [
        ShapeSpec(s.shape, _other(s.color, s.background), s.background, s.position, s.size) for s in specs
    ]
    wrong = [caption(spec, None, template="full") for spec in wrong_specs]
    report = score(images, wrong)
    assert report.accuracy["color"] == 0.0 and report.shape_and_color_accuracy == 0.0
    assert report.accuracy["shape"] == 1.0
    table = report.table()
    assert all(name in table for name in (*SPEC_FIELDS, "shape+color"))
    assert "0.0%" in table and "100.0%" in table

    # A hexagon asked for and a circle drawn shows up in the confusion and the table.
    circle = render(ShapeSpec("circle", "red", "blue", "centre", "large"))
    report = score([circle], ["a red hexagon"])
    assert report.shape_confusion == {("hexagon", "circle"): 1} and "hexagon->circle: 1" in str(report)
    # A batch tensor straight from a sampler is scored like a list of images.
    dataset = ShapesDataset(6, seed=8, shapes=SHAPES)
    batch = torch.stack([dataset[i]["image"] for i in range(6)])  # (6, 3, 64, 64)
    report = score(batch, [dataset[i]["caption"] for i in range(6)])
    assert report.shape_and_color_accuracy == 1.0 and report.n_images == 6
    with pytest.raises(ValueError, match="one prompt per image"):
        score(images[:2], prompts[:1])


def _other(color, background):
    return next(c for c in COLORS if c not in (color, background))


def _lumpy_circle(radius: float, bump: float, harmonic: int, phase: float) -> np.ndarray:
    """A red disc on blue whose radius swings by ``bump`` (a fraction) ``harmonic`` times around: r(t) = R(1 + b cos(nt))."""
    from PIL import Image, ImageDraw

    scale, side = 8, 64
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = radius * scale * (1 + bump * np.cos(harmonic * theta + phase))
    points = list(zip(side * scale / 2 + r * np.cos(theta), side * scale / 2 + r * np.sin(theta)))
    canvas = Image.new("RGB", (side * scale, side * scale), PALETTE["blue"])
    ImageDraw.Draw(canvas).polygon(points, fill=PALETTE["red"])
    return np.asarray(canvas.resize((side, side), Image.Resampling.BOX))


@pytest.mark.parametrize("harmonic", [3, 4, 5])
def test_a_lumpy_circle_is_a_circle_and_a_polygon_far_from_one_is_not(harmonic):
    # 4% bumps: nearer a circle than the square's ~13% (the triangle's ~26%, the star's ~20%)
    for phase in (0.0, 0.5, 1.0):
        assert read_image(_lumpy_circle(14, 0.04, harmonic, phase)).shape == "circle"
    # a bump as deep as the shape itself reads as that shape
    depth = {3: 0.22, 4: 0.11, 5: 0.18}[harmonic]
    assert read_image(_lumpy_circle(14, depth, harmonic, 0.0)).shape == {3: "triangle", 4: "square", 5: "star"}[harmonic]
