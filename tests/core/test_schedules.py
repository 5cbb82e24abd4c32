"""Schedules against their published formulas and against diffusers' independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from difflab.core.schedules import NoiseSchedule, cosine_betas, linear_betas, rescale_zero_terminal_snr


def test_linear_is_ddpm_schedule() -> None:
    betas = linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # Ho et al. 2020 table/appendix: alpha_bar_T ~ 4.0e-5 for this schedule (SNR_T ~ 1e-5 / "nearly pure noise")
    alpha_bar_T = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)))
    assert NoiseSchedule(betas).alphas_cumprod[-1].item() == pytest.approx(alpha_bar_T, rel=1e-12)


@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                                   ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(name: str, diffusers_name: str) -> None:
    kwargs = {"scaled_linear": dict(beta_start=0.00085, beta_end=0.012)}.get(name, {})
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, **kwargs).betas
    ours = NoiseSchedule.create(name).betas  # type: ignore[arg-type]
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=1e-9)


def test_cosine_alpha_bar_follows_nichol_dhariwal_eq17() -> None:
    """alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T) + s) / (1 + s) * pi / 2), s = 0.008, where not clipped."""
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = NoiseSchedule(cosine_betas(T)).alphas_cumprod
    for t in (0, 1, 100, 500, 900, 980):  # alpha_bar_t is after step t, i.e. f(t + 1) / f(0)
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert cosine_betas(T).max().item() == pytest.approx(0.999)  # the clip at the singular end


def test_zero_terminal_snr_matches_diffusers_and_paper() -> None:
    betas = linear_betas()
    rescaled = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(rescaled, diffusers_rescale(betas.clone()), rtol=1e-12, atol=1e-15)
    schedule = NoiseSchedule(rescaled)
    assert schedule.snr[-1].item() == 0.0  # pure noise at T
    assert schedule.alphas_cumprod[0].item() == pytest.approx(NoiseSchedule(betas).alphas_cumprod[0].item(), rel=1e-12)
    assert math.isfinite(schedule.sigmas[-1].item())  # clamped like diffusers for samplers


def test_views_are_consistent() -> None:
    schedule = NoiseSchedule.create("cosine")
    alpha_bar = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.snr, alpha_bar / (1 - alpha_bar))
    torch.testing.assert_close(schedule.sigmas, schedule.snr.rsqrt())
    assert (schedule.sigmas.diff() > 0).all(), "noise must rise with t"


def test_sigma_to_t_inverts_t_to_sigma() -> None:
    schedule = NoiseSchedule.create("linear")
    t = torch.tensor([0.0, 1.0, 37.0, 500.0, 998.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    between = schedule.sigma_to_t(torch.tensor([float(schedule.sigmas[10] * 0.5 + schedule.sigmas[11] * 0.5)]))
    assert 10 < between.item() < 11
    assert schedule.sigma_to_t(torch.tensor([0.0])).item() == 0.0


def test_unknown_schedule_lists_choices() -> None:
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine"):
        NoiseSchedule.create("quadratic")  # type: ignore[arg-type]
