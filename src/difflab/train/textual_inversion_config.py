"""The recipe of a textual inversion run (``difflab train embedding``), checked when it is built: each bad value
names its option and the allowed range."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

MAX_VECTORS = 16  # A1111's "number of vectors per token" slider goes to 75; more than a few rarely helps


@dataclass(frozen=True)
class TextualInversionConfig:
    data: str
    token: str
    init_word: str
    base: str = "tiny-shapes"
    vectors: int = 1
    steps: int = 500
    learning_rate: float = 5e-3  # A1111's default embedding learning rate (diffusers' example: 5e-4 x batch)
    batch_size: int = 4
    caption_template: str = "{trigger}"  # the caption of an image without a .txt file
    checkpoint_every: int = 100
    seed: int = 0
    resolution: Optional[int] = None  # default: the base model's

    # what must match to --resume a run: its data and shapes
    RESUME_FIELDS = ("base", "data", "token", "init_word", "vectors", "batch_size", "caption_template", "seed",
                     "resolution")

    def __post_init__(self) -> None:
        from difflab.engine.embeddings import check_token

        try:
            check_token(self.token)
        except ValueError:
            raise ValueError(f"token: must be one word without spaces, brackets, ':' or ','; got {self.token!r}") from None
        if not self.init_word.strip():
            raise ValueError("init_word: must not be empty (the embedding starts from its vectors)")
        _require(1 <= self.vectors <= MAX_VECTORS, f"vectors: must be 1 to {MAX_VECTORS}; got {self.vectors}")
        _require(self.steps >= 1, f"steps: must be >= 1; got {self.steps}")
        _require(math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1,
                 f"lr: must be in (0, 1]; got {self.learning_rate}")
        _require(1 <= self.batch_size <= 256, f"batch_size: must be 1 to 256; got {self.batch_size}")
        _require(self.checkpoint_every >= 1, f"checkpoint_every: must be >= 1; got {self.checkpoint_every}")
        _require(self.resolution is None or (8 <= self.resolution <= 4096 and self.resolution % 8 == 0),
                 f"resolution: must be a multiple of 8 from 8 to 4096; got {self.resolution}")
        _require("{trigger}" in self.caption_template,
                 f"caption_template: must contain {{trigger}}; got {self.caption_template!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
