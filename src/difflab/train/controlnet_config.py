"""The settings of one ControlNet training run (``difflab train controlnet``): a frozen dataclass, checked on creation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from difflab.engine.control import CANNY_HIGH, CANNY_LOW


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ControlNetTrainConfig:
    base: str = "tiny-shapes"  # model preset or diffusers folder of a Stable Diffusion 1.x-family pipeline
    num_images: int = 4000  # procedural shapes (data/shapes.py) drawn from data_seed; cached as latents + maps
    data_seed: int = 1  # the shapes world's seed; the bundled model trained on seed 0's stream, any works
    low: int = CANNY_LOW  # canny thresholds of the control maps: the same as the canny preprocessor's defaults
    high: int = CANNY_HIGH
    learning_rate: float = 2e-4  # peak AdamW rate; diffusers' SD1.5 example uses 1e-5 on a 360M-parameter copy,
    # a copy of a 64 px U-Net of a few million parameters trains stably at a much higher rate
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 10% (core.train.learning_rate_at)
    steps: int = 3000
    batch_size: int = 32
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    empty_prompt_probability: float = 0.5  # the ControlNet paper (sec. 3.3) drops half of the prompts so the
    # network learns to read the map itself instead of leaning on the caption
    checkpoint_every: int = 250  # steps between training-state checkpoints (and the ControlNet folder) on disk
    validate_every: int = 0  # steps between validation grids (with edge F1); 0 = only at the end
    validation_images: int = 4  # shapes in the validation grid
    validation_steps: int = 20
    validation_guidance: float = 7.5
    seed: int = 0  # every random draw of step k (batch, timesteps, noise, dropped prompts) comes from (seed, k)

    def __post_init__(self) -> None:
        _require(self.num_images >= 1, f"num_images must be >= 1; got {self.num_images}")
        _require(self.data_seed >= 0, f"data_seed must be >= 0; got {self.data_seed}")
        _require(0 <= self.low <= self.high, f"low must be between 0 and high ({self.high}); got {self.low}")
        _require(math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1,
                 f"learning_rate must be in (0, 1); got {self.learning_rate}")
        _require(self.steps >= 1, f"steps must be >= 1; got {self.steps}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _require(self.grad_clip > 0, f"grad_clip must be > 0; got {self.grad_clip}")
        _require(0 <= self.empty_prompt_probability <= 1,
                 f"empty_prompt_probability must be in [0, 1]; got {self.empty_prompt_probability}")
        _require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1; got {self.checkpoint_every}")
        _require(self.validate_every >= 0, f"validate_every must be >= 0; got {self.validate_every}")
        _require(self.validation_images >= 1, f"validation_images must be >= 1; got {self.validation_images}")
        _require(self.validation_steps >= 1, f"validation_steps must be >= 1; got {self.validation_steps}")
        _require(0 <= self.seed < 2**32, f"seed must be in [0, 2**32); got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # what must match between a run and its --resume: anything that changes the data, the shapes or the draws
    RESUME_FIELDS = ("base", "num_images", "data_seed", "low", "high", "batch_size", "empty_prompt_probability",
                     "seed")
