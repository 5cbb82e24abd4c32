"""Tests for the "shifted" colour style: the palette permutation, renders and the LoRA training folder."""

import numpy as np
import pytest
from PIL import Image

from difflab.data.captioned_folder import load_captioned_folder
from difflab.data.palette_shift import PALETTE_SHIFT, SHIFT_TRIGGER, render_shifted, shifted_spec, write_shifted_set
from difflab.data.shapes import COLORS, PALETTE, ShapeSpec, caption, parse_prompt, random_spec, render
from difflab.train.tokenizer import tokenizer_words


def test_shift_is_a_permutation_without_fixed_points():
    assert sorted(PALETTE_SHIFT) == sorted(COLORS) == sorted(PALETTE_SHIFT.values())
    assert all(source != target for source, target in PALETTE_SHIFT.items())
    # the wheel, written out by hand rather than derived from the table
    assert [PALETTE_SHIFT[c] for c in ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")] == [
        "orange", "yellow", "green", "blue", "purple", "red", "black", "white"]


def test_shifted_spec_keeps_geometry_and_distinct_colours():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = random_spec(rng)
        shifted = shifted_spec(spec)  # ShapeSpec's own check: colour != background
        assert (shifted.shape, shifted.position, shifted.size) == (spec.shape, spec.position, spec.size)
        assert (shifted.color, shifted.background) == (PALETTE_SHIFT[spec.color], PALETTE_SHIFT[spec.background])


def test_render_shifted_is_render_repainted():
    spec = ShapeSpec("hexagon", "red", "blue", "left", "large")
    shifted = np.asarray(render_shifted(spec, 7))
    plain = np.asarray(render(spec, 7))
    # same geometry: the pixels of the plain shape colour are exactly those of the shifted shape colour
    assert np.array_equal(np.all(plain == PALETTE["red"], axis=2), np.all(shifted == PALETTE["orange"], axis=2))
    assert np.array_equal(np.all(plain == PALETTE["blue"], axis=2), np.all(shifted == PALETTE["purple"], axis=2))
    # and the same draws from a generator as render
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    render_shifted(spec, a)
    render(spec, b)
    assert a.random() == b.random()


def test_trigger_is_spelt_with_tokenizer_characters_but_is_no_caption_word():
    characters = {c for word in tokenizer_words() for c in word}
    assert set(SHIFT_TRIGGER) <= characters  # sub-word pieces, never the unknown token
    assert SHIFT_TRIGGER not in tokenizer_words()
    assert parse_prompt(f"{SHIFT_TRIGGER}, a red circle") == parse_prompt("a red circle")


def test_write_shifted_set(tmp_path):
    paths = write_shifted_set(tmp_path, n=6, seed=1, shapes=("circle", "square"))
    assert [p.name for p in paths] == [f"{i:04d}.png" for i in range(6)]
    data = load_captioned_folder(tmp_path, 64)
    # replay the draws: image i is the shifted render of the spec its caption describes, unshifted
    rng = np.random.default_rng(1)
    for path, text in zip(paths, data.captions):
        spec = random_spec(rng, ("circle", "square"))
        assert text == f"{SHIFT_TRIGGER}, {caption(spec, rng)}"
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(render_shifted(spec, rng)))
    again = write_shifted_set(tmp_path / "again", n=6, seed=1, shapes=("circle", "square"))
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_write_shifted_set_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        write_shifted_set(tmp_path, n=0)
    with pytest.raises(ValueError, match="one word"):
        write_shifted_set(tmp_path, n=1, trigger="two words")
