"""Tests for the procedural shapes dataset: specs, rendering, captions, parsing, determinism."""

import itertools

import numpy as np
import pytest
import torch

from difflab.data.shapes import (
    BASE_SHAPES,
    CAPTION_TEMPLATES,
    COLORS,
    HELD_OUT_SHAPES,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    PromptSpec,
    ShapeSpec,
    ShapesDataset,
    caption,
    caption_vocabulary,
    parse_prompt,
    random_spec,
    render,
    split_words,
)

# Which spec fields each caption phrasing states, written out by hand (not derived from the
# templates) so a template edit that drops a field is caught here.
TEMPLATE_FIELDS = {
    "full": {"shape", "color", "background", "position", "size"},
    "full_on_a": {"shape", "color", "background", "position", "size"},
    "full_bare": {"shape", "color", "background", "position", "size"},
    "terse": {"shape", "color", "background", "position"},
    "no_position": {"shape", "color", "background", "size"},
    "shape_at_position": {"shape", "color", "position"},
    "minimal": {"shape", "color"},
    "no_color": {"shape", "background", "position", "size"},
    "shape_only": {"shape"},
}


# A pixel inside every canonical shape at each position (centres at 0.31 / 0.5 / 0.69 of 64 px).
SHAPE_CENTRE_PIXELS = {
    "left": (20, 32),
    "right": (44, 32),
    "top": (32, 20),
    "bottom": (32, 44),
    "centre": (32, 32),
}


def test_world_definition():
    assert set(BASE_SHAPES) | set(HELD_OUT_SHAPES) == set(SHAPES)
    assert not set(BASE_SHAPES) & set(HELD_OUT_SHAPES)
    assert HELD_OUT_SHAPES == ("hexagon",)
    assert len(COLORS) >= 8
    rgb = np.array([PALETTE[c] for c in COLORS], dtype=float)
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + np.eye(len(COLORS)) * 1e9
    assert gaps.min() > 90, "palette colours must stay far apart for the analyzer"
    assert set(TEMPLATE_FIELDS) == set(CAPTION_TEMPLATES)


def test_spec_validation_lists_allowed_values():
    with pytest.raises(ValueError, match="hexagon"):
        ShapeSpec("pentagon", "red", "blue", "left", "small")
    with pytest.raises(ValueError, match="must differ"):
        ShapeSpec("circle", "red", "red", "left", "small")
    with pytest.raises(ValueError, match="centre"):
        PromptSpec(position="center")  # aliases are for parsing text, not for specs
    with pytest.raises(ValueError, match="circle"):
        random_spec(0, shapes=("blob",))


def test_random_spec_covers_everything_and_respects_shapes():
    rng = np.random.default_rng(0)
    specs = [random_spec(rng) for _ in range(600)]
    assert {s.shape for s in specs} == set(BASE_SHAPES)
    assert {s.color for s in specs} == set(COLORS)
    assert {s.background for s in specs} == set(COLORS)
    assert {s.position for s in specs} == set(POSITIONS)
    assert {s.size for s in specs} == set(SIZES)
    assert all(s.color != s.background for s in specs)
    assert {random_spec(rng, HELD_OUT_SHAPES).shape for _ in range(20)} == {"hexagon"}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_combination_renders(shape):
    # Canonical (unjittered) renders: frame is pure background, shape centre is pure shape colour.
    for color, position, size in itertools.product(COLORS, POSITIONS, SIZES):
        background = COLORS[(COLORS.index(color) + 1) % len(COLORS)]
        image = np.asarray(render(ShapeSpec(shape, color, background, position, size)))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == PALETTE[background]).all()
        cx, cy = SHAPE_CENTRE_PIXELS[position]
        assert (image[cy, cx] == PALETTE[color]).all(), (shape, color, position, size)


def test_render_resolution_and_seeded_jitter():
    spec = ShapeSpec("star", "yellow", "black", "top", "large")
    assert render(spec, resolution=32).size == (32, 32)
    assert render(spec, resolution=128).size == (128, 128)
    a, b, c = (np.asarray(render(spec, seed)) for seed in (3, 3, 4))
    assert (a == b).all()
    assert not (a == c).all()
    with pytest.raises(ValueError, match="resolution"):
        render(spec, resolution=8)


def test_dataset_items_are_deterministic_per_seed_and_index():
    first, again, other = ShapesDataset(8, seed=11), ShapesDataset(8, seed=11), ShapesDataset(8, seed=12)
    _ = [first[i] for i in (5, 1, 7)]  # reading other items first must not change item 3
    a, b, c = first[3], again[3], other[3]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert not torch.equal(a["image"], c["image"])
    assert [first[i]["caption"] for i in range(8)] != [first[0]["caption"]] * 8


def test_dataset_item_format():
    dataset = ShapesDataset(4, seed=0)
    assert len(dataset) == 4
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    spec = ShapeSpec(*(item[name] for name in ("shape", "color", "background", "position", "size")))
    # The item's image is exactly its spec rendered from the item's generator.
    spec_again, text, rng = dataset.spec_and_caption(0)
    assert spec_again == spec and text == item["caption"]
    expected = torch.from_numpy(np.asarray(render(spec, rng), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(item["image"], expected)
    with pytest.raises(IndexError):
        dataset[4]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and len(batch["caption"]) == 4


def test_dataset_shapes_argument():
    base = ShapesDataset(300, seed=1)
    assert {base.spec_and_caption(i)[0].shape for i in range(300)} == set(BASE_SHAPES)
    held_out = ShapesDataset(20, seed=1, shapes=HELD_OUT_SHAPES)
    assert {held_out.spec_and_caption(i)[0].shape for i in range(20)} == {"hexagon"}
    assert ShapesDataset(2, seed=0, resolution=32)[0]["image"].shape == (3, 32, 32)


def test_caption_examples():
    spec = ShapeSpec("circle", "red", "blue", "left", "small")
    assert caption(spec, None, template="full") == "a small red circle on the left, blue background"
    assert caption(spec, None, template="terse") == "red circle, left, on blue"
    spec = ShapeSpec("star", "green", "white", "top", "large")
    assert caption(spec, None, template="full_on_a") == "a large green star at the top on a white background"
    spec = ShapeSpec("triangle", "yellow", "black", "centre", "small")
    expected = "small yellow triangle in the centre, black background"
    assert caption(spec, None, template="full_bare") == expected
    spec = ShapeSpec("hexagon", "orange", "purple", "bottom", "large")
    assert caption(spec, None, template="minimal") == "an orange hexagon"
    spec = ShapeSpec("square", "blue", "orange", "right", "small")
    assert caption(spec, None, template="full_on_a").endswith("on an orange background")
    with pytest.raises(ValueError, match="minimal"):
        caption(spec, 0, template="haiku")


def test_captions_parse_back_to_their_spec():
    rng = np.random.default_rng(2)
    used = set()
    for _ in range(300):
        spec = random_spec(rng, SHAPES)
        for name, stated in TEMPLATE_FIELDS.items():
            parsed = parse_prompt(caption(spec, rng, template=name))
            expected = PromptSpec(**{f: getattr(spec, f) for f in stated})
            assert parsed == expected, (name, spec)
        # Randomly phrased captions (the dataset's) parse back too, and use every phrasing.
        text = caption(spec, rng)
        matches = {n for n in CAPTION_TEMPLATES if caption(spec, None, template=n) == text}
        assert matches, text
        used |= matches
    assert used == set(CAPTION_TEMPLATES)


def test_parse_free_form_prompts():
    assert parse_prompt("A big green hexagon in the center on a white background") == PromptSpec(
        "hexagon", "green", "white", "centre", "large"
    )
    assert parse_prompt("blue background, tiny red star") == PromptSpec("star", "red", "blue", None, "small")
    assert parse_prompt("a purple square") == PromptSpec(shape="square", color="purple")
    assert parse_prompt("something in the middle") == PromptSpec(position="centre")
    assert parse_prompt("") == PromptSpec()
    with pytest.raises(ValueError, match="more than one shape"):
        parse_prompt("a circle next to a square")
    with pytest.raises(ValueError, match="more than one"):
        parse_prompt("a red blue circle")


def test_caption_vocabulary_is_exactly_the_words_captions_use():
    vocabulary = caption_vocabulary()
    assert vocabulary == sorted(set(vocabulary))
    assert "hexagon" in vocabulary and "an" in vocabulary
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(2000):
        seen.update(split_words(caption(random_spec(rng, SHAPES), rng)))
    assert seen == set(vocabulary)
