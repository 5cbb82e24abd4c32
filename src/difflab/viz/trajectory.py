"""The reverse process as a picture: the noisy state x and the model's x_0 estimate after every sampler step."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from PIL import Image, ImageDraw

from difflab.core.samplers import SamplerStep
from difflab.viz.grid import make_grid, to_pil

ROW_LABELS = ("x_t", "x0 est.")  # the noisy state, the model's estimate of the clean image at that step


def trajectory_grid(steps: Iterable[SamplerStep], *, columns: int = 10, scale: int = 6) -> Image.Image:
    """Two rows for the first sample: x at each step (top; shown in the DDPM scale x / sqrt(1 + sigma^2), the
    range the network sees) and the x_0 estimate used at that step (bottom), at ``columns`` evenly chosen steps;
    rows named in the left margin, columns "k/n" above under a "step" heading."""
    steps = list(steps)
    if not steps:
        raise ValueError("trajectory_grid needs at least one sampler step")
    picked = sorted({round(i * (len(steps) - 1) / max(1, columns - 1)) for i in range(columns)})
    states, estimates = [], []
    for index in picked:
        step = steps[index]
        states.append(step.x[:1] / math.sqrt(1 + step.sigma_next**2))
        estimates.append(step.denoised[:1])
    tiles = to_pil(torch.cat(states)) + to_pil(torch.cat(estimates))
    labels = [f"{steps[i].index + 1}/{steps[i].total}" for i in picked]
    grid = make_grid(tiles, columns=len(picked), scale=scale, labels=labels, row_labels=ROW_LABELS)
    ImageDraw.Draw(grid).text((2, 1), "step", fill=(0, 0, 0))  # what the column labels count, above the row names
    return grid
