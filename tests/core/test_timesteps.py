"""Step grids against diffusers' timestep spacings and Karras sigmas."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from difflab.core.schedules import NoiseSchedule
from difflab.core.timesteps import get_sigmas, get_sigmas_karras, spaced_timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 1000])
def test_spacing_matches_diffusers_ddim(spacing: str, steps: int) -> None:
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert spaced_timesteps(steps, 1000, spacing).long().tolist() == scheduler.timesteps.tolist()  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [3, 20, 30])
def test_linspace_matches_diffusers_euler(steps: int) -> None:
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(spaced_timesteps(steps, 1000, "linspace").float(), scheduler.timesteps)
    torch.testing.assert_close(get_sigmas(NoiseSchedule.create("linear"), steps, spacing="linspace").float(),
                               scheduler.sigmas)


@pytest.mark.parametrize("steps", [5, 20])
def test_karras_matches_diffusers_and_eq5(steps: int) -> None:
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="linspace", use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    ours = get_sigmas(NoiseSchedule.create("linear"), steps, karras=True)
    # diffusers derives sigma_min/max from a float32 cumprod of 1000 betas: ~1e-4 relative from float64's
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=2e-4, atol=1e-6)
    # endpoints are exactly sigma_max and sigma_min, and rho = 7 makes the 1/7th powers evenly spaced
    sigmas = get_sigmas_karras(steps, 0.1, 80.0)
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.1) and sigmas[-1] == 0
    roots = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(steps - 1))


def test_bad_steps_are_rejected() -> None:
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        spaced_timesteps(0, 1000)
    with pytest.raises(ValueError, match="spacing must be one of"):
        spaced_timesteps(10, 1000, "sideways")  # type: ignore[arg-type]
