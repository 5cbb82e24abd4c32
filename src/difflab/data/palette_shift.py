"""The "shifted" colour style for the shapes world: every colour moved one step around the colour wheel.

A style, unlike a shape, applies to every shape, so a LoRA that learns it can be combined with the hexagon LoRA
(bench/lora_combine.py, issue 4). The style is a fixed recolouring of the palette, :data:`PALETTE_SHIFT`: red ->
orange -> yellow -> green -> blue -> purple -> red, and white <-> black. A shifted image of "a red circle on
blue" shows an orange circle on purple; its caption keeps the words of the unshifted spec with the trigger in
front ("shifted, a red circle on blue"), so the LoRA learns to repaint what the prompt asks for.

Why a palette shift and not a texture (an outline, a drop shadow, a negative): the tiny-shapes VAE has only ever
seen palette-coloured shapes on palette-coloured grounds, and its encode/decode round trip removes what is not
such an image (measured on an intermediate checkpoint's VAE, 60 renders each: a 2 px black outline comes back as a
coloured fringe keeping ~5% of its near-black rim, a drop shadow 45 RGB levels dark keeps an eighth of its
darkening, inverted colours snap back towards the palette, 81 levels off on average). What the VAE cannot carry, a
U-Net LoRA cannot learn. A shifted image is an ordinary shapes-world image, so the style survives the VAE, and
the adherence analyzer reads its shape exactly as an unstyled one's (a 3 px outline made it misread 1 in 4 clean
hexagons): the two LoRAs' effects are measured apart, shape by :func:`difflab.eval.adherence.read_image`, style
by :mod:`difflab.eval.palette_shift`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from difflab.data.shapes import BASE_SHAPES, RngLike, ShapeSpec, caption, random_spec, render

# One step around the hue wheel for the six hues, and light <-> dark for white and black: a bijection without a
# fixed point, so the shape and its background stay different colours and every colour of a shifted image differs
# from the one the caption names (each image measures the style).
PALETTE_SHIFT: dict[str, str] = {
    "red": "orange", "orange": "yellow", "yellow": "green", "green": "blue", "blue": "purple", "purple": "red",
    "white": "black", "black": "white",
}
# The trigger word of the style LoRA. The tiny-shapes tokenizer knows only the caption vocabulary (one token per
# word, train/tokenizer.py); "shifted" is not in it but is spelt with its characters, so it becomes sub-word
# pieces ("s h i f t ed</w>") that no base caption contains. A vocabulary word would do too, but each of those
# already means something to the base model (a colour, a position) that the LoRA would have to fight.
SHIFT_TRIGGER = "shifted"


def shifted_spec(spec: ShapeSpec) -> ShapeSpec:
    """The spec a shifted image of ``spec`` shows: shape colour and background moved by :data:`PALETTE_SHIFT`."""
    return replace(spec, color=PALETTE_SHIFT[spec.color], background=PALETTE_SHIFT[spec.background])


def render_shifted(spec: ShapeSpec, rng: RngLike = None, resolution: int = 64) -> Image.Image:
    """:func:`~difflab.data.shapes.render` of :func:`shifted_spec`: the same geometry and the same draws from
    ``rng``, repainted."""
    return render(shifted_spec(spec), rng, resolution)


def write_shifted_set(folder: str | Path, n: int = 30, seed: int = 0, resolution: int = 64,
                      shapes: Iterable[str] = BASE_SHAPES, trigger: str = SHIFT_TRIGGER) -> list[Path]:
    """``n`` shifted renders of ``shapes`` as ``0000.png`` + ``0000.txt``, the LoRA trainer's folder format.

    Captions are full shapes-world captions of the *unshifted* spec with the trigger in front ("shifted, a small
    red circle on the left, blue background" over an orange circle on purple), as
    :func:`~difflab.data.captioned_folder.write_shape_set` writes them with a trigger.
    """
    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.data.captioned_folder import CAPTION_SUFFIX
    from difflab.viz.grid import png_bytes

    if not 1 <= n <= 10_000:
        raise ValueError(f"n must be between 1 and 10000; got {n}")
    trigger = trigger.strip()
    if not trigger or any(c.isspace() for c in trigger):
        raise ValueError(f"trigger must be one word; got {trigger!r}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    written = []
    for index in range(n):
        spec = random_spec(rng, shapes)
        text = f"{trigger}, {caption(spec, rng)}"
        image_path = folder / f"{index:04d}.png"
        atomic_write_bytes(image_path, png_bytes(render_shifted(spec, rng, resolution)))
        atomic_write_bytes(image_path.with_suffix(CAPTION_SUFFIX), (text + "\n").encode())
        written.append(image_path)
    return written
