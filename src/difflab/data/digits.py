"""sklearn's handwritten digits: 1,797 8x8 grey images of 0-9, shipped inside scikit-learn (no download).

Pixels are 0..16 in the original; difflab scales them to [-1, 1], the range a diffusion model's Gaussian noise
is matched to, and keeps the helpers to go back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGITS_MAX = 16.0  # sklearn's digits are counts of set pixels in 4x4 blocks: 0..16
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))


@dataclass(frozen=True)
class LabelledImages:
    """Images (N, C, H, W) float32 in [-1, 1] with integer labels (N,) and the names of the labels."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_digits() -> LabelledImages:
    """All 1,797 digits as (N, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits as sklearn_load_digits  # lazy: sklearn is slow to import

    bunch = sklearn_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32))[:, None]  # (N, 1, 8, 8)
    return LabelledImages(to_model_range(images), torch.from_numpy(bunch.target.astype(np.int64)), CLASS_NAMES)


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """0..16 -> -1..1."""
    return pixels / DIGITS_MAX * 2 - 1


def to_digit_pixels(images: torch.Tensor) -> torch.Tensor:
    """-1..1 -> 0..16, clipped: the scale sklearn's digits (and a classifier trained on them) use."""
    return ((images.clamp(-1, 1) + 1) / 2 * DIGITS_MAX)
