"""Noise schedules: how much noise the forward process has added by step t.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239):

    beta_t                      variance added at step t            (code: ``betas``)
    alpha_t = 1 - beta_t                                             (code: ``alphas``)
    alpha_bar_t = prod_{s<=t} alpha_s   signal kept after t steps    (code: ``alphas_cumprod``)
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps

Two other views of the same numbers are used by samplers:

    SNR_t   = alpha_bar_t / (1 - alpha_bar_t)                        (code: ``snr``)
    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = 1 / sqrt(SNR)  (code: ``sigmas``)

``sigma`` is the noise level of the "variance exploding" form x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps that
k-diffusion (Karras et al. 2022, arXiv:2206.00364) and diffusers' Euler/Heun/DPM-Solver schedulers step in.
Everything is computed in float64: alpha_bar near 1 (t small) and near 0 (t large) loses digits in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

ScheduleName = Literal["linear", "scaled_linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "cosine")

# With a zero-terminal-SNR schedule alpha_bar_T is exactly 0 and sigma_T is infinite; like diffusers we clamp it
# to 2**-24 (sigma ~ 4096) wherever a finite sigma is needed.
ZERO_SNR_ALPHA_BAR = 2.0**-24


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: beta rises linearly from 1e-4 to 0.02 over T = 1000 steps (Ho et al. 2020, sec. 4)."""
    _check_num_timesteps(num_timesteps)
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's schedule: sqrt(beta) is linear (Rombach et al. 2022, the released configs)."""
    _check_num_timesteps(num_timesteps)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021 (arXiv:2102.09672, eq. 17): alpha_bar(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) π/2).

    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at ``max_beta`` = 0.999 to avoid the singularity at t = T.
    """
    _check_num_timesteps(num_timesteps)

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(num_timesteps, dtype=torch.float64)
    betas = 1 - f(t + 1) / f(t)
    return betas.clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step is pure noise (Lin et al. 2024, arXiv:2305.08891, alg. 1).

    Most schedules leave a little signal at t = T (SNR_T > 0), so a model never sees pure noise in training
    but starts from it at sampling time; this rescale makes SNR_T = 0 while keeping SNR_0 unchanged.
    """
    sqrt_alpha_bar = torch.cumprod(1 - betas.to(torch.float64), dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete noise schedule of T steps, t = 0 .. T-1, with its derived views (all float64, shape (T,))."""

    betas: torch.Tensor

    @classmethod
    def create(
        cls,
        name: ScheduleName = "linear",
        num_timesteps: int = 1000,
        *,
        zero_terminal_snr: bool = False,
        **kwargs: float,
    ) -> NoiseSchedule:
        """Build a schedule by name ("linear", "scaled_linear", "cosine"); kwargs go to the beta function."""
        makers = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}
        if name not in makers:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
        betas = makers[name](num_timesteps, **kwargs)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar); 0 at t = T-1 for a zero-terminal-SNR schedule."""
        alpha_bar = self.alphas_cumprod
        return alpha_bar / (1 - alpha_bar)

    @property
    def sigmas(self) -> torch.Tensor:
        """Noise level of the variance-exploding form, sqrt((1 - alpha_bar) / alpha_bar); always finite."""
        alpha_bar = self.alphas_cumprod
        alpha_bar = torch.where(alpha_bar > 0, alpha_bar, torch.full_like(alpha_bar, ZERO_SNR_ALPHA_BAR))
        return ((1 - alpha_bar) / alpha_bar).sqrt()

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor, *, quantize: bool = False) -> torch.Tensor:
        """Continuous timestep for a noise level, interpolating linearly in log(sigma) between table entries.

        This is k-diffusion's ``DiscreteSchedule.sigma_to_t`` and diffusers' ``_sigma_to_t``; it is exact at the
        table's sigmas. ``quantize`` rounds to the nearest integer step (diffusers' DPM-Solver does this with
        Karras sigmas).
        """
        log_sigma = sigma.to(torch.float64).clamp(min=1e-10).log()
        log_sigmas = self.log_sigmas
        # index of the table entry just below log_sigma: sigmas increase with t
        low = torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True).clamp(1, len(log_sigmas) - 1) - 1
        low_value, high_value = log_sigmas[low], log_sigmas[low + 1]
        weight = ((log_sigma.reshape(-1) - low_value) / (high_value - low_value)).clamp(0, 1)
        t = (low + weight).reshape(sigma.shape)
        return t.round() if quantize else t

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at a (possibly fractional) timestep, interpolating linearly in sigma like diffusers."""
        t = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_timesteps - 2)
        weight = t - low
        sigmas = self.sigmas
        return (1 - weight) * sigmas[low] + weight * sigmas[low + 1]


def _check_num_timesteps(num_timesteps: int) -> None:
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2; got {num_timesteps}")
