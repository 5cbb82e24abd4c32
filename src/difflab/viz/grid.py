"""Image grids and conversions between model tensors ([-1, 1], (B, C, H, W)) and PIL images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] -> PIL images (mode L for one channel, RGB for three)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def make_grid(
    images: Sequence[Image.Image], columns: int | None = None, *, scale: int = 1, padding: int = 2,
    background: int | tuple[int, int, int] = 255, labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tile images row by row (``columns`` defaults to a near-square layout); nearest-neighbour ``scale`` keeps
    small images' pixels sharp. ``labels`` (one per column) are written above the columns, ``row_labels`` (one per
    row) in a margin to the left of the rows."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].width * scale, images[0].height * scale
    top = 14 if labels else 0
    left = 6 * max(len(str(label)) for label in row_labels) + 4 if row_labels else 0  # the default font: ~6 px a glyph
    mode = "RGB" if any(im.mode != "L" for im in images) or labels or row_labels else "L"
    fill = background if mode == "RGB" or isinstance(background, int) else background[0]
    if mode == "RGB" and isinstance(fill, int):
        fill = (fill, fill, fill)
    grid = Image.new(mode, (left + columns * (width + padding) + padding, top + rows * (height + padding) + padding),
                     fill)
    for i, image in enumerate(images):
        tile = image.convert(mode).resize((width, height), Image.NEAREST)
        grid.paste(tile, (left + padding + (i % columns) * (width + padding),
                          top + padding + (i // columns) * (height + padding)))
    if labels or row_labels:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(grid)
        for column, label in enumerate((labels or [])[:columns]):
            draw.text((left + padding + column * (width + padding), 1), str(label), fill=(0, 0, 0))
        for row, label in enumerate((row_labels or [])[:rows]):
            draw.text((2, top + padding + row * (height + padding) + height // 2 - 5), str(label), fill=(0, 0, 0))
    return grid


def save_images(images: Sequence[Image.Image], folder: str | Path, prefix: str = "") -> list[Path]:
    """Save each image as ``{prefix}{index:05d}.png`` atomically (write then rename)."""
    from difflab.core.checkpoint import atomic_write_bytes

    folder = Path(folder)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{prefix}{index:05d}.png"
        atomic_write_bytes(path, png_bytes(image))
        paths.append(path)
    return paths


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()

