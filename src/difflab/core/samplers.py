"""Samplers: plain generator functions with one signature, in the spirit of k-diffusion's ``sampling.py``.

    sample_<name>(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, **options)

``x`` starts as noise at ``sigmas[0]`` (``initial_noise``), ``sigmas`` is a decreasing grid ending in 0
(``difflab.core.timesteps``), and each function yields a ``SamplerStep`` after every step; the last step's ``x`` is
the sample. ``sample(...)`` drains a sampler and returns that sample; a progress bar, a trajectory plot or a
server's event stream consume the same steps.

Everything runs in the variance-exploding form x = x_0 + sigma * eps, where the ODE of the reverse process is
dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, arXiv:2206.00364, eq. 3 with sigma(t) = t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import torch

from difflab.core.denoiser import Denoiser

Sampler = Callable[..., Iterator["SamplerStep"]]


@dataclass(frozen=True)
class SamplerStep:
    """One finished step: ``x`` is now at noise level ``sigma_next``; ``denoised`` is the x_0 estimate used."""

    index: int  # 0-based
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def initial_noise(
    shape: tuple[int, ...], sigma_max: float, *, generator: Generators = None, dtype=torch.float32
) -> torch.Tensor:
    """x_T for a DDPM-trained model: x_t ~ N(0, I) in the DDPM scale is N(0, (1 + sigma^2) I) in the VE scale."""
    return randn(shape, generator, dtype) * math.sqrt(1 + sigma_max**2)


def randn(shape: tuple[int, ...], generator: Generators, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise on the CPU. With one generator per sample (a list), row i comes from generator i
    alone, so a sample does not change with the batch it is drawn in (diffusers' list-of-generators rule)."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, dtype=dtype)


def guided(denoiser: Denoiser, cond: Any, guidance: float) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): D = D_u + s (D_c - D_u).

    Guiding the x_0 estimate is the same as guiding eps, since x_0 = x - sigma eps is affine in eps. Both branches
    run as one batch of 2B. ``guidance`` = 1 (or no ``cond``) is plain conditional (or unconditional) denoising.
    """

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float64)
        if cond is None or guidance == 1.0:
            return denoiser(x, sigmas, cond)
        uncond = denoiser.null_cond(cond)
        both = denoiser(torch.cat([x, x]), torch.cat([sigmas, sigmas]), torch.cat([uncond, cond]))
        denoised_uncond, denoised_cond = both.chunk(2)
        return denoised_uncond + guidance * (denoised_cond - denoised_uncond)

    return denoise


def _sigma_list(sigmas: torch.Tensor) -> list[float]:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D grid of at least 2 values (steps + 1, ending in 0)")
    return [float(s) for s in sigmas]


def _noise_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return randn(tuple(x.shape), generator, x.dtype).to(x.device)


def sample_euler(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None,
) -> Iterator[SamplerStep]:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, alg. 2 without churn)."""
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma  # dx/dsigma, the noise estimate eps
        x = x + d * (sigma_next - sigma)
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


def sample_heun(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None,
) -> Iterator[SamplerStep]:
    """Heun's second-order method (Karras et al. 2022, alg. 1 without churn); Euler on the last step to sigma = 0."""
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            x = x + (d + d_next) / 2 * dt
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step from sigma to sigma_next into a deterministic part down to sigma_down and fresh noise sigma_up.

    sigma_up = eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2).
    With eta = 1 this is the DDPM posterior's variance; with eta in [0, 1] it is DDIM's (Song et al. 2021,
    arXiv:2010.02502, eq. 16) written in the VE scale.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def sample_euler_ancestral(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None, eta: float = 1.0,
) -> Iterator[SamplerStep]:
    """Euler down to sigma_down, then add fresh noise of size sigma_up (k-diffusion's ``sample_euler_ancestral``)."""
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = (x - denoised) / sigma
        x = x + d * (sigma_down - sigma)
        if sigma_up > 0:
            x = x + _noise_like(x, generator) * sigma_up
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


def sample_ddim(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None, eta: float = 0.0,
) -> Iterator[SamplerStep]:
    """DDIM (Song et al. 2021, eq. 12): x_{t-1} = sqrt(ab') x_0 + sqrt(1 - ab' - s^2) eps + s z.

    Divided by sqrt(ab') this is x' = x_0 + sigma_down eps + sigma_up z: with eta = 0 (the default) DDIM is exactly
    Euler on the ODE (Karras et al. 2022, sec. 4), and with eta > 0 it is Euler ancestral.
    """
    yield from sample_euler_ancestral(denoiser, x, sigmas, cond=cond, guidance=guidance, generator=generator, eta=eta)


def sample_ddpm(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None,
) -> Iterator[SamplerStep]:
    """Ancestral sampling from the posterior q(x_{t-1} | x_t, x_0 = D(x_t)) (Ho et al. 2020, alg. 2 and eq. 7).

    Written as in the paper, in the DDPM scale x_t = sqrt(ab) x (ab = alpha_bar = 1 / (1 + sigma^2)); steps that
    skip timesteps use alpha = ab_t / ab_prev, as diffusers' ``DDPMScheduler`` does. No noise on the last step.
    """
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        alpha_bar, alpha_bar_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha
        x_t = x * math.sqrt(alpha_bar)
        coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)
        coef_xt = math.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        x_prev = coef_x0 * denoised + coef_xt * x_t  # posterior mean mu_tilde
        if sigma_next > 0:
            variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta  # beta_tilde
            x_prev = x_prev + math.sqrt(variance) * _noise_like(x, generator)
        x = x_prev / math.sqrt(alpha_bar_prev)
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


def _multistep_denoised(
    denoised: torch.Tensor, previous: torch.Tensor | None, previous_h: float | None, h: float
) -> torch.Tensor:
    """DPM-Solver++(2M)'s second-order correction, D + (D - D_prev) / (2r) with r = h_prev / h (the midpoint
    form); the plain D on the first step, where there is no previous estimate."""
    if previous is None or previous_h is None:
        return denoised
    r = previous_h / h
    return denoised + (denoised - previous) / (2 * r)


def sample_dpmpp_2m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None,
) -> Iterator[SamplerStep]:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, alg. 2), in k-diffusion's VE form.

    In log-SNR time lambda = -log(sigma) with step h, the first-order update is x' = (sigma'/sigma) x - expm1(-h) D;
    2M replaces D by a linear extrapolation from the previous step's D. First order on the first step and on the
    last one to sigma = 0 (where the update is x' = D).
    """
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    previous_denoised, previous_h = None, None
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)  # lambda_next - lambda
            denoised_d = _multistep_denoised(denoised, previous_denoised, previous_h, h)
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
            previous_h = h
        previous_denoised = denoised
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, guidance: float = 1.0,
    generator: Generators = None,
) -> Iterator[SamplerStep]:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, sec. 5 / appendix; diffusers' "sde-dpmsolver++",
    A1111's "DPM++ 2M SDE"), midpoint form, in the VE scale:

        x' = (sigma'/sigma) e^-h x + (1 - e^-2h) (D + (D - D_prev) / (2 r)) + sigma' sqrt(1 - e^-2h) z

    The reverse SDE re-injects noise every step, which corrects the model's errors instead of integrating them
    as the ODE does; first order on the first step, and x' = D on the last step to sigma = 0.
    """
    denoise, levels = guided(denoiser, cond, guidance), _sigma_list(sigmas)
    previous_denoised, previous_h = None, None
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            denoised_d = _multistep_denoised(denoised, previous_denoised, previous_h, h)
            x = (sigma_next / sigma * math.exp(-h)) * x - math.expm1(-2 * h) * denoised_d
            x = x + _noise_like(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * h)))
            previous_h = h
        previous_denoised = denoised
        yield SamplerStep(i, len(levels) - 1, sigma, sigma_next, x, denoised)


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
}


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return SAMPLERS[name]


def sample(sampler: str | Sampler, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Run a sampler to the end and return the sample."""
    run = get_sampler(sampler) if isinstance(sampler, str) else sampler
    for step in run(denoiser, x, sigmas, **kwargs):
        x = step.x
    return x
