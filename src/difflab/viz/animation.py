"""The reverse process as an animation: one GIF frame per sampler step, the noisy state above the model's x_0 estimate.

The still grid (:mod:`difflab.viz.trajectory`) shows ten chosen steps of one sample; the GIF shows every step of
several samples, which is where one sees the x_0 estimate settle long before the noisy state does.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image, ImageDraw

from difflab.core.samplers import SamplerStep
from difflab.viz.grid import make_grid, to_pil
from difflab.viz.trajectory import ROW_LABELS

FRAME_MS = 150  # per step: 20 steps play in 3 s, slow enough to follow one digit
FINAL_HOLD_MS = 1500  # the finished sample stays up before the loop restarts


def trajectory_frames(steps: Iterable[SamplerStep], *, samples: int = 8, scale: int = 6) -> list[Image.Image]:
    """One frame per step: row 1 the state x (in the DDPM scale x / sqrt(1 + sigma^2), what the network sees),
    row 2 the x_0 estimate that step used, for the first ``samples`` samples (rows named in the left margin);
    captioned with step and sigma."""
    frames = []
    for step in steps:
        count = min(samples, step.x.shape[0])
        state = step.x[:count] / math.sqrt(1 + step.sigma_next**2)  # (count, C, H, W)
        tiles = to_pil(torch.cat([state, step.denoised[:count]]))
        grid = make_grid(tiles, columns=count, scale=scale, labels=[""] * count, row_labels=ROW_LABELS).convert("RGB")
        ImageDraw.Draw(grid).text((2, 1), f"step {step.index + 1}/{step.total}  sigma {step.sigma_next:.2f}",
                                  fill=(0, 0, 0))
        frames.append(grid)
    if not frames:
        raise ValueError("trajectory_frames needs at least one sampler step")
    return frames


def save_gif(frames: Sequence[Image.Image], path: str | Path, *, frame_ms: int = FRAME_MS,
             final_hold_ms: int = FINAL_HOLD_MS) -> Path:
    """Write an endlessly looping GIF atomically (the last frame held ``final_hold_ms``)."""
    from difflab.core.checkpoint import atomic_write_bytes

    if not frames:
        raise ValueError("save_gif needs at least one frame")
    durations = [frame_ms] * (len(frames) - 1) + [final_hold_ms]
    buffer = io.BytesIO()
    # one shared palette per frame is enough: the frames are greys (digits) or a few flat colours (shapes)
    frames[0].save(buffer, format="GIF", save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def trajectory_gif(steps: Iterable[SamplerStep], path: str | Path, *, samples: int = 8, scale: int = 6) -> Path:
    """:func:`trajectory_frames` saved as a GIF."""
    return save_gif(trajectory_frames(steps, samples=samples, scale=scale), path)
