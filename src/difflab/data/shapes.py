"""Procedural captioned "shapes" dataset: one coloured shape on a plain background.

Every sample is generated on the fly from ``(seed, index)``, so a dataset of any length costs
no disk and two runs with the same seed see the same images and captions.

An image is described by a :class:`ShapeSpec` (shape, colour, background colour, position,
size). :func:`render` draws it anti-aliased, :func:`caption` phrases it in one of several
templates, and :func:`parse_prompt` reads a (partial) spec back out of any prompt so that
:mod:`difflab.eval.adherence` can check generated images against what was asked for.

Geometry is defined in fractions of the image side, so any resolution works; 64x64 is the
one the project trains on.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

# --- vocabulary of the world -------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
BASE_SHAPES = ("circle", "square", "triangle", "star")
# Hexagon is kept out of base training on purpose: it is taught later with a LoRA, and it is
# the shape closest to a circle, which makes it a fair test of fine-grained adherence.
HELD_OUT_SHAPES = ("hexagon",)

# RGB values chosen far apart (smallest pairwise distance ~100 of a possible 441) so that
# the nearest-palette read of a blurry generated image is still unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (250, 225, 35),
    "purple": (135, 50, 175),
    "orange": (245, 125, 20),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS = tuple(PALETTE)

POSITIONS = ("left", "right", "top", "bottom", "centre")
SIZES = ("small", "large")

# Words a prompt may use for a value; the canonical spelling is the value itself.
POSITION_ALIASES = {"center": "centre", "middle": "centre"}
SIZE_ALIASES = {"big": "large", "tiny": "small"}

# Shape centre per position, as (x, y) fractions of the side. 0.31/0.69 keeps a large shape
# inside the frame while leaving the left/centre/right centroids ~12 px apart at 64 px.
POSITION_CENTRES = {
    "left": (0.31, 0.50),
    "right": (0.69, 0.50),
    "top": (0.50, 0.31),
    "bottom": (0.50, 0.69),
    "centre": (0.50, 0.50),
}
# Circumradius range per size, as a fraction of the side. The gap between 0.16 and 0.23 is
# what keeps "small" vs "large" unambiguous after jitter and blunted star tips.
SIZE_RADII = {"small": (0.13, 0.16), "large": (0.23, 0.27)}
POSITION_JITTER = 0.025  # fraction of the side (~1.6 px at 64), well inside the category
ROTATION_JITTER_DEGREES = 10.0  # squares stay squares, not diamonds
STAR_INNER_RATIO = 0.45  # inner/outer radius; chunkier than the classic 0.38 so small stars survive 64 px
SUPERSAMPLE = 4  # draw at 4x and box-filter down: exact area anti-aliasing, no ringing

RngLike = Union[np.random.Generator, int, None]


def _check_choice(name: str, value: Optional[str], allowed: tuple[str, ...], optional: bool) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class ShapeSpec:
    """Everything an image shows: which shape, in which colour, on which background, where, how big."""

    shape: str  # one of SHAPES
    color: str  # one of COLORS
    background: str  # one of COLORS, never equal to color
    position: str  # one of POSITIONS
    size: str  # one of SIZES

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES, optional=False)
        _check_choice("color", self.color, COLORS, optional=False)
        _check_choice("background", self.background, COLORS, optional=False)
        _check_choice("position", self.position, POSITIONS, optional=False)
        _check_choice("size", self.size, SIZES, optional=False)
        if self.color == self.background:
            raise ValueError(f"color and background must differ, both are {self.color!r}")


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for; a field the prompt does not mention is None."""

    shape: Optional[str] = None
    color: Optional[str] = None
    background: Optional[str] = None
    position: Optional[str] = None
    size: Optional[str] = None

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES, optional=True)
        _check_choice("color", self.color, COLORS, optional=True)
        _check_choice("background", self.background, COLORS, optional=True)
        _check_choice("position", self.position, POSITIONS, optional=True)
        _check_choice("size", self.size, SIZES, optional=True)

    def specified(self) -> tuple[str, ...]:
        """Names of the fields the prompt specifies."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)


SPEC_FIELDS = tuple(f.name for f in fields(ShapeSpec))


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def random_spec(rng: RngLike, shapes: Iterable[str] = BASE_SHAPES) -> ShapeSpec:
    """Draw a spec uniformly: shape from ``shapes``, colour, a different background, position, size."""
    shapes = tuple(shapes)
    if not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {list(SHAPES)}")
    for shape in shapes:
        _check_choice("shape", shape, SHAPES, optional=False)
    rng = _as_rng(rng)
    shape = shapes[rng.integers(len(shapes))]
    color = COLORS[rng.integers(len(COLORS))]
    backgrounds = tuple(c for c in COLORS if c != color)
    background = backgrounds[rng.integers(len(backgrounds))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    size = SIZES[rng.integers(len(SIZES))]
    return ShapeSpec(shape, color, background, position, size)


# --- rendering ---------------------------------------------------------------------------


def _regular_polygon(n: int, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    # angle = direction of the first vertex, radians, measured from "up" clockwise on screen.
    return [
        (cx + radius * np.sin(angle + 2 * np.pi * k / n), cy - radius * np.cos(angle + 2 * np.pi * k / n))
        for k in range(n)
    ]


def _star(cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    outer = _regular_polygon(5, cx, cy, radius, angle)
    inner = _regular_polygon(5, cx, cy, radius * STAR_INNER_RATIO, angle + np.pi / 5)
    return [point for pair in zip(outer, inner) for point in pair]


def _outline(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape's outline (circle excluded), in pixel coordinates."""
    if shape == "square":
        return _regular_polygon(4, cx, cy, radius, angle + np.pi / 4)  # flat top
    if shape == "triangle":
        return _regular_polygon(3, cx, cy, radius, angle)  # pointing up
    if shape == "star":
        return _star(cx, cy, radius, angle)  # a point up
    if shape == "hexagon":
        return _regular_polygon(6, cx, cy, radius, angle + np.pi / 6)  # flat top
    raise ValueError(f"no polygon outline for {shape!r}; polygons are {[s for s in SHAPES if s != 'circle']}")


def render(spec: ShapeSpec, rng: RngLike = None, resolution: int = 64) -> Image.Image:
    """Draw ``spec`` as an RGB image of ``resolution`` x ``resolution``.

    With ``rng`` (a Generator or int seed) the centre, radius and rotation are jittered within the
    spec's categories; with ``rng=None`` the canonical, unjittered image is drawn.
    """
    if resolution < 16:
        raise ValueError(f"resolution must be at least 16, got {resolution}")
    centre_x, centre_y = POSITION_CENTRES[spec.position]
    radius_low, radius_high = SIZE_RADII[spec.size]
    if rng is None:
        radius, angle = (radius_low + radius_high) / 2, 0.0
    else:
        rng = _as_rng(rng)
        centre_x += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        centre_y += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        radius = rng.uniform(radius_low, radius_high)
        angle = np.deg2rad(rng.uniform(-ROTATION_JITTER_DEGREES, ROTATION_JITTER_DEGREES))

    # 1. Draw at SUPERSAMPLE x. Pixel (i, j) of the big canvas covers [i, i+1); PIL fills pixels by
    #    their integer corner, so shift by half a pixel to put the shape where the fractions say.
    side = resolution * SUPERSAMPLE
    cx, cy, r = centre_x * side - 0.5, centre_y * side - 0.5, radius * side
    canvas = Image.new("RGB", (side, side), PALETTE[spec.background])
    draw = ImageDraw.Draw(canvas)
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=PALETTE[spec.color])
    else:
        draw.polygon(_outline(spec.shape, cx, cy, r, angle), fill=PALETTE[spec.color])
    # 2. Box-filter down: each output pixel is the mean of its SUPERSAMPLE^2 block (area coverage).
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


# --- captions ----------------------------------------------------------------------------

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

# Caption phrasings. Every one names shape and colour; the others are omitted where noted.
CAPTION_TEMPLATES: dict[str, str] = {
    # all fields: "a small red circle on the left, blue background"
    "full": "a {size} {color} {shape} {position_phrase}, {background} background",
    # all fields: "a large green star at the top on a white background"
    "full_on_a": "a {size} {color} {shape} {position_phrase} on a {background} background",
    # all fields: "small yellow triangle in the centre, black background"
    "full_bare": "{size} {color} {shape} {position_phrase}, {background} background",
    # no size: "red circle, left, on blue"
    "terse": "{color} {shape}, {position}, on {background}",
    # no position: "a large orange square on purple"
    "no_position": "a {size} {color} {shape} on {background}",
    # no size, no background: "a white hexagon at the bottom"
    "shape_at_position": "a {color} {shape} {position_phrase}",
    # shape and colour only: "a blue triangle"
    "minimal": "a {color} {shape}",
    # no colour: "a small circle on the left, blue background". Without colour-free captions a prompt like
    # "a circle" is outside everything the model saw: it drew the same one or two colours for every seed, and a
    # negative prompt had nothing to steer away from.
    "no_color": "a {size} {shape} {position_phrase}, {background} background",
    # the shape alone: "a star"
    "shape_only": "a {shape}",
}


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def caption(spec: ShapeSpec, rng: RngLike, template: Optional[str] = None) -> str:
    """Describe ``spec`` in words, with a phrasing drawn from ``rng`` unless ``template`` names one."""
    if template is None:
        names = tuple(CAPTION_TEMPLATES)
        template = names[_as_rng(rng).integers(len(names))]
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"template must be one of {list(CAPTION_TEMPLATES)}, got {template!r}")
    text = CAPTION_TEMPLATES[template].format(
        shape=spec.shape,
        color=spec.color,
        background=spec.background,
        position=spec.position,
        position_phrase=POSITION_PHRASES[spec.position],
        size=spec.size,
    )
    # "a orange" -> "an orange"; only colours can start with a vowel here.
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text``, punctuation dropped: the tokenisation the vocabulary assumes."""
    return re.findall(r"[a-z]+", text.lower())


def caption_vocabulary() -> list[str]:
    """Sorted list of every word :func:`caption` can produce (all shapes, including held-out ones)."""
    words: set[str] = {"an"}  # from the "a orange" -> "an orange" rewrite
    for template in CAPTION_TEMPLATES.values():
        literal = string.Formatter().parse(template)
        words.update(w for text, _, _, _ in literal for w in split_words(text))
    words.update(SHAPES, COLORS, POSITIONS, SIZES)
    for phrase in POSITION_PHRASES.values():
        words.update(split_words(phrase))
    return sorted(words)


# --- parsing prompts ---------------------------------------------------------------------


def parse_prompt(text: str) -> PromptSpec:
    """Read which shape, colour, background, position and size a prompt asks for.

    The colour before the shape word is the shape's colour; a colour after it, or one followed
    by "background", is the background. Accepts "center"/"middle" for centre and "big"/"tiny"
    for large/small. Raises ValueError when the prompt names two shapes, positions, sizes, shape
    colours or background colours, since no single image can satisfy it.
    """
    words = split_words(text)

    def unique(kind: str, values: list[str]) -> Optional[str]:
        distinct = sorted(set(values))
        if len(distinct) > 1:
            raise ValueError(f"prompt names more than one {kind} ({distinct}): {text!r}")
        return distinct[0] if distinct else None

    shape_at = [i for i, w in enumerate(words) if w in SHAPES]
    shape = unique("shape", [words[i] for i in shape_at])
    canonical = [POSITION_ALIASES.get(w, SIZE_ALIASES.get(w, w)) for w in words]
    position = unique("position", [w for w in canonical if w in POSITIONS])
    size = unique("size", [w for w in canonical if w in SIZES])

    color, background = None, None
    for i, word in enumerate(words):
        if word not in PALETTE:
            continue
        names_background = i + 1 < len(words) and words[i + 1] == "background"
        is_background = names_background or (bool(shape_at) and i > shape_at[0])
        if is_background:
            if background not in (None, word):
                raise ValueError(f"prompt names more than one background colour: {text!r}")
            background = word
        else:
            if color not in (None, word):
                raise ValueError(f"prompt names more than one shape colour: {text!r}")
            color = word
    return PromptSpec(shape=shape, color=color, background=background, position=position, size=size)


# --- torch dataset -----------------------------------------------------------------------


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 tensor (3, H, W) in [-1, 1], the convention the models use."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` procedural samples; sample ``index`` depends only on ``(seed, index)``.

    Each item is a dict with ``image`` (float32 (3, H, W) in [-1, 1]), ``caption`` (str) and the
    spec fields ``shape``, ``color``, ``background``, ``position``, ``size`` (str).
    """

    def __init__(self, length: int, seed: int, shapes: Iterable[str] = BASE_SHAPES, resolution: int = 64):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        self.length = length
        self.seed = seed
        self.shapes = tuple(shapes)
        for shape in self.shapes:
            _check_choice("shape", shape, SHAPES, optional=False)
        self.resolution = resolution

    def __len__(self) -> int:
        return self.length

    def spec_and_caption(self, index: int) -> tuple[ShapeSpec, str, np.random.Generator]:
        """The spec and caption of sample ``index``, plus the generator positioned for rendering."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        # Seeding from (seed, index) rather than one stream makes every item independent of
        # which others were read before it, so DataLoader workers and shuffling don't matter.
        rng = np.random.default_rng((self.seed, index))
        spec = random_spec(rng, self.shapes)
        text = caption(spec, rng)
        return spec, text, rng

    def __getitem__(self, index: int) -> dict:
        spec, text, rng = self.spec_and_caption(index)
        image = render(spec, rng, self.resolution)
        item = {"image": image_to_tensor(image), "caption": text}
        item.update({name: getattr(spec, name) for name in SPEC_FIELDS})
        return item
