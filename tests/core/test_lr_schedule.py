"""Learning-rate schedules against the libraries whose names they take: diffusers' get_scheduler for constant,
constant_with_warmup, linear and cosine, and transformers' cosine_with_min_lr (min_lr_rate 0.1) for difflab's
cosine_floor, which differs only in reaching the peak on the last warm-up step instead of the step after it."""

from __future__ import annotations

import pytest
import torch

from difflab.core.lr_schedule import LR_SCHEDULERS, lr_factor

STEPS, WARMUP, PEAK = 50, 7, 1e-3


def scheduler_rates(scheduler_factory, steps: int = STEPS, peak: float = PEAK) -> list[float]:
    """The rate of optimizer step k = 0 .. steps - 1, scheduler stepped after each optimizer step (their loops)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = scheduler_factory(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_diffusers_schedules_match_get_scheduler(name):
    from diffusers.optimization import get_scheduler

    expected = scheduler_rates(lambda opt: get_scheduler(name, opt, num_warmup_steps=WARMUP, num_training_steps=STEPS))
    ours = [PEAK * lr_factor(name, k, WARMUP, STEPS) for k in range(STEPS)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    if name != "constant":
        assert expected[0] == 0.0 and max(expected) == pytest.approx(PEAK)  # a warm-up from 0, as theirs


def test_cosine_floor_is_cosine_with_min_lr_after_the_warm_up():
    from transformers import get_scheduler

    expected = scheduler_rates(lambda opt: get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=WARMUP,
                                                num_training_steps=STEPS, scheduler_specific_kwargs={"min_lr_rate": 0.1}))
    ours = [PEAK * lr_factor("cosine_floor", k, WARMUP, STEPS) for k in range(STEPS)]
    assert ours[WARMUP:] == pytest.approx(expected[WARMUP:], rel=1e-9)
    # warm-up: (k + 1) / W here, k / W there -- difflab's first step already moves the weights
    assert ours[:WARMUP] == pytest.approx([PEAK * (k + 1) / WARMUP for k in range(WARMUP)])
    assert ours[-1] == pytest.approx(PEAK * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 42 / 43)).item())))


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        lr_factor("cosine_with_restarts", 3, WARMUP, STEPS)
    assert "cosine_floor" in LR_SCHEDULERS
