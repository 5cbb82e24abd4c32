"""The forward process as a picture: one image noised to evenly spaced timesteps, one row per schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from difflab.core.process import q_sample
from difflab.core.schedules import NoiseSchedule
from difflab.viz.grid import make_grid, to_pil


def load_image_tensor(source: str, size: int) -> torch.Tensor:
    """An image file, or ``digit:N`` (sample N of sklearn's digits), as (1, C, size, size) in [-1, 1]."""
    if source.startswith("digit:"):
        from difflab.data.digits import load_digits

        index = int(source.split(":", 1)[1])
        digits = load_digits()
        if not 0 <= index < len(digits):
            raise ValueError(f"digit index must be in 0..{len(digits) - 1}; got {index}")
        image = to_pil(digits.images[index : index + 1])[0]
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"image {source!r} does not exist")
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            raise ValueError(f"image {source!r} cannot be read ({error})") from None
    image = image.resize((size, size), Image.NEAREST if image.width < size else Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1
    tensor = torch.from_numpy(pixels)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor[None]


def forward_grid(
    x_0: torch.Tensor, schedules: Sequence[str], *, columns: int = 10, seed: int = 0, num_timesteps: int = 1000
) -> Image.Image:
    """Rows: schedules (named in the left margin); columns: t = 0 .. T-1 evenly (labelled "t=..." above); the
    same noise everywhere, so only the schedule differs."""
    noise = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed))
    timesteps = torch.linspace(0, num_timesteps - 1, columns).round().long()
    tiles = []
    for name in schedules:
        schedule = NoiseSchedule.create(name, num_timesteps)  # type: ignore[arg-type]
        for t in timesteps:
            tiles.extend(to_pil(q_sample(schedule, x_0, t.reshape(1), noise)))
    labels = [f"t={int(t)}" for t in timesteps]
    return make_grid(tiles, columns=columns, labels=labels, row_labels=list(schedules))
