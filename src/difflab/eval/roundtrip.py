"""What the autoencoder alone keeps: render shapes, encode, decode, and read them back with the analyzer.

A text-to-image model in latent space can draw no finer than its VAE decodes, so this is the ceiling of its
shape adherence: a shape that does not survive the round trip through the VAE cannot come out of the U-Net
either. Measured per shape and size, since what the VAE loses first is the corners of small shapes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from difflab.data.shapes import SIZES, image_to_tensor, random_spec, render
from difflab.eval.adherence import read_image


@torch.no_grad()
def roundtrip_accuracy(vae: Any, shapes: Sequence[str], per_cell: int = 32, seed: int = 0,
                       resolution: int = 64) -> dict[tuple[str, str], float]:
    """Share of renders of each (shape, size) that the analyzer reads as that shape after encode -> decode.

    The posterior mean is decoded (what a deterministic round trip keeps). Renders are drawn from ``seed``
    (colours, backgrounds, positions, rotations) until every cell has ``per_cell`` of them."""
    rng = np.random.default_rng(seed)
    counts = {(shape, size): [0, 0] for shape in shapes for size in SIZES}  # (read back, rendered)
    while any(rendered < per_cell for _, rendered in counts.values()):
        spec = random_spec(rng, shapes=shapes)
        cell = counts[(spec.shape, spec.size)]
        if cell[1] >= per_cell:
            continue
        x = image_to_tensor(render(spec, rng, resolution))[None]
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
        cell[0] += read_image(decoded).shape == spec.shape
        cell[1] += 1
    return {key: hits / rendered for key, (hits, rendered) in counts.items()}


def roundtrip_table(results: dict[str, dict[tuple[str, str], float]]) -> str:
    """Markdown table: one row per (shape, size), one column per VAE (``results`` maps a name to its accuracy)."""
    names = list(results)
    cells = list(next(iter(results.values())))
    lines = ["| shape | size | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for shape, size in cells:
        values = " | ".join(f"{100 * results[name][(shape, size)]:.0f}%" for name in names)
        lines.append(f"| {shape} | {size} | {values} |")
    return "\n".join(lines)
