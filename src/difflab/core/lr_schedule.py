"""Learning-rate schedules by name, as fractions of the peak rate: pure arithmetic, so configs can validate a name
without importing torch."""

from __future__ import annotations

import math

# Learning-rate schedules by name. "cosine_floor" is difflab's own (every phase trains with it); the others are
# diffusers' get_scheduler (and kohya's --lr_scheduler) names with their formulas, where optimizer step k runs at
# the rate the scheduler gives after k scheduler steps (their warm-up starts at 0).
LR_SCHEDULERS = ("cosine_floor", "constant", "constant_with_warmup", "linear", "cosine")
DEFAULT_LR_SCHEDULER = "cosine_floor"


def lr_factor(name: str, step: int, warmup_steps: int, steps: int) -> float:
    """The fraction of the peak rate that schedule ``name`` gives optimizer step ``step`` (0-based) of ``steps``."""
    if name == "cosine_floor":  # warm-up reaching the peak on its last step, cosine decay to 10% at the end
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if name == "constant":
        return 1.0
    if name not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler must be one of {list(LR_SCHEDULERS)}; got {name!r}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)  # cosine: half a period, to 0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
