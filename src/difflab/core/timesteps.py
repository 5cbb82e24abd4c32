"""Step grids for sampling: which noise levels a sampler visits, from the most noise down to zero.

A grid is a float64 tensor of ``steps + 1`` sigmas, decreasing, ending in 0 (the clean image). Samplers take a
grid and nothing else about time, as in k-diffusion; these functions make the grids.

- ``spaced_timesteps``: pick ``steps`` of the T training timesteps, in diffusers' three spacings
  (Lin et al. 2024, arXiv:2305.08891, table 2): "leading" (DDPM/DDIM's original), "linspace", "trailing"
  (starts at t = T-1, i.e. from the noise level the model was trained at, which the others miss at few steps).
- ``get_sigmas_karras``: Karras et al. 2022 (arXiv:2206.00364, eq. 5), denser near sigma_min.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from difflab.core.schedules import NoiseSchedule

Spacing = Literal["leading", "linspace", "trailing"]
SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")


def spaced_timesteps(steps: int, num_timesteps: int, spacing: Spacing = "trailing") -> torch.Tensor:
    """``steps`` timesteps in decreasing order, float64 ("linspace" may be fractional, like diffusers' Euler)."""
    if steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}; got {steps}")
    if spacing == "leading":
        step_ratio = num_timesteps // steps
        timesteps = np.arange(0, steps) * step_ratio
    elif spacing == "linspace":
        timesteps = np.linspace(0, num_timesteps - 1, steps)
    elif spacing == "trailing":
        step_ratio = num_timesteps / steps
        timesteps = np.round(np.arange(num_timesteps, 0, -step_ratio)).astype(np.int64)[::-1] - 1
    else:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
    return torch.from_numpy(np.ascontiguousarray(timesteps[::-1], dtype=np.float64))


def get_sigmas_spaced(schedule: NoiseSchedule, steps: int, spacing: Spacing = "trailing") -> torch.Tensor:
    """The schedule's sigmas at ``steps`` spaced timesteps, with the final 0 appended."""
    timesteps = spaced_timesteps(steps, schedule.num_timesteps, spacing)
    return _append_zero(schedule.t_to_sigma(timesteps))


def get_sigmas_karras(
    steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def get_sigmas(
    schedule: NoiseSchedule, steps: int, *, karras: bool = False, spacing: Spacing = "trailing"
) -> torch.Tensor:
    """The grid difflab samples on: spaced timesteps, or Karras sigmas over the schedule's sigma range."""
    if karras:
        sigmas = schedule.sigmas
        return get_sigmas_karras(steps, float(sigmas[0]), float(sigmas[-1]))
    return get_sigmas_spaced(schedule, steps, spacing)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])
