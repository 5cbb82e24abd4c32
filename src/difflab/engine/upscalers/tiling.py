"""Running an upscaling network on a large image in tiles, so memory stays bounded.

Each tile is cut with ``overlap`` pixels of context on every side; the network sees tile + context, and only the
tile's own part of its output is kept. A pixel's output depends only on input within the network's receptive field,
so with an overlap at least that radius the tiled result equals the whole-image result (tested); with less, tile
seams can differ slightly, as in A1111's and ComfyUI's tiled upscaling.
"""

from __future__ import annotations

import torch

DEFAULT_TILE = 192  # input pixels per tile side: a 4x RRDBNet tile of 192 + 2 x 16 needs about 1.5 GB in float32
DEFAULT_OVERLAP = 16


def tiled(network, image: torch.Tensor, scale: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
          on_tile=None) -> torch.Tensor:
    """``network`` over ``image`` (B, C, H, W) tile by tile; returns (B, C, scale H, scale W)."""
    if tile <= 0:
        raise ValueError(f"tile must be a positive number of pixels; got {tile}")
    batch, channels, height, width = image.shape
    if height <= tile and width <= tile:
        return network(image)
    out = image.new_zeros(batch, channels, height * scale, width * scale)
    rows, columns = range(0, height, tile), range(0, width, tile)
    done, total = 0, len(rows) * len(columns)
    for top in rows:
        for left in columns:
            bottom, right = min(top + tile, height), min(left + tile, width)
            # context around the tile, clipped at the image border
            top_c, left_c = max(top - overlap, 0), max(left - overlap, 0)
            bottom_c, right_c = min(bottom + overlap, height), min(right + overlap, width)
            result = network(image[:, :, top_c:bottom_c, left_c:right_c])
            y0, x0 = (top - top_c) * scale, (left - left_c) * scale
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = \
                result[:, :, y0:y0 + (bottom - top) * scale, x0:x0 + (right - left) * scale]
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return out
