"""The forward process, its posterior, the three parameterisations, and the training loss.

Ho et al. 2020 (arXiv:2006.11239):

    q(x_t | x_0)          = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                       (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I)                                           (eqs. 6-7)
        mu_tilde   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                   + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

A network may predict the noise eps (Ho et al.), the clean image x_0, or the velocity
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, arXiv:2202.00512); the conversions below
turn any one of them into the others.
"""

from __future__ import annotations

from typing import Literal

import torch

from difflab.core.schedules import NoiseSchedule

Prediction = Literal["epsilon", "sample", "v_prediction"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "sample", "v_prediction")  # diffusers' names for eps, x0, v


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast against ``like`` (B, C, H, W), in ``like``'s dtype."""
    picked = values.to(like.device)[t.long()]
    return picked.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def q_sample(schedule: NoiseSchedule, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Jump straight to step t: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    alpha_bar = _at(schedule.alphas_cumprod, t, x_0)
    return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * noise


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu_tilde and variance beta_tilde of q(x_{t-1} | x_t, x_0); at t = 0, alpha_bar_{-1} = 1."""
    alpha_bar = schedule.alphas_cumprod
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    betas = schedule.betas
    coef_x0 = alpha_bar_prev.sqrt() * betas / (1 - alpha_bar)
    coef_xt = (1 - betas).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * betas
    mean = _at(coef_x0, t, x_0) * x_0 + _at(coef_xt, t, x_t) * x_t
    return mean, _at(variance, t, x_t)


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    alpha_bar = _at(schedule.alphas_cumprod, t, x_t)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def predict_eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
    alpha_bar = _at(schedule.alphas_cumprod, t, x_t)
    return (x_t - alpha_bar.sqrt() * x_0) / (1 - alpha_bar).sqrt()


def velocity(schedule: NoiseSchedule, x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""
    alpha_bar = _at(schedule.alphas_cumprod, t, x_0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x_0


def predict_x0_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v."""
    alpha_bar = _at(schedule.alphas_cumprod, t, x_t)
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def training_target(
    schedule: NoiseSchedule, prediction: Prediction, x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """What the network is trained to output for (x_0, t, eps) under the given parameterisation."""
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x_0
    if prediction == "v_prediction":
        return velocity(schedule, x_0, t, eps)
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")


def min_snr_weight(snr: torch.Tensor, prediction: Prediction, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, arXiv:2303.09556, eq. 9 and sec. 3.4).

    The paper weights the x_0 loss by min(SNR, gamma); an eps loss is SNR times an x_0 loss, so its weight is
    min(SNR, gamma) / SNR, and a v loss is (SNR + 1) times one, so min(SNR, gamma) / (SNR + 1).
    """
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr.clamp(min=1e-20)
    if prediction == "v_prediction":
        return clipped / (snr + 1)
    if prediction == "sample":
        return clipped
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")


def diffusion_loss(
    schedule: NoiseSchedule,
    prediction: Prediction,
    model_output: torch.Tensor,
    x_0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    *,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error to the target; with ``min_snr_gamma``, each sample weighted by min-SNR-gamma."""
    target = training_target(schedule, prediction, x_0, t, eps)
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is None:
        return per_sample.mean()
    weight = min_snr_weight(schedule.snr.to(x_0.device)[t.long()], prediction, min_snr_gamma).float()
    return (weight * per_sample).mean()
