"""One denoiser interface for every sampler: ``denoiser(x, sigma, cond) -> x_0 estimate``.

Samplers step in the variance-exploding form x = x_0 + sigma * eps (see schedules.py). A network trained on the
discrete DDPM process instead sees x_t = x / sqrt(1 + sigma^2) at timestep t = t(sigma) and predicts eps, x_0 or v.
``DiscreteTimeDenoiser`` makes the translation once, for any such network (difflab's U-Net, or a diffusers
``UNet2DConditionModel`` wrapped in a lambda), in the spirit of k-diffusion's ``external.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from difflab.core.process import PREDICTIONS, Prediction
from difflab.core.schedules import NoiseSchedule

# model(x_t, t, cond) -> network output, with x_t in the DDPM (variance preserving) scale and t a float tensor (B,)
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """Estimate x_0 from x = x_0 + sigma * eps; ``sigma`` has shape (B,)."""

    def null_cond(self, cond: Any) -> Any:
        """The conditioning that means "no condition", shaped like ``cond`` (for classifier-free guidance)."""


class DiscreteTimeDenoiser:
    """Wraps a network trained on the discrete-time process of ``schedule`` as a ``Denoiser``."""

    def __init__(
        self,
        model: ModelFn,
        schedule: NoiseSchedule,
        prediction: Prediction = "epsilon",
        *,
        null_cond: Callable[[Any], Any] | None = None,
        quantize: bool = False,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self._null_cond = null_cond
        self.quantize = quantize  # round t to whole steps, as diffusers' DPM-Solver does with Karras sigmas

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        sigma = sigma.to(torch.float64)
        t = self.schedule.sigma_to_t(sigma, quantize=self.quantize)
        # (B, 1, 1, 1) factors, computed in float64 and applied in x's dtype
        shape = (-1,) + (1,) * (x.ndim - 1)
        scale_in = (1 / (sigma**2 + 1).sqrt()).reshape(shape).to(x.dtype)  # sqrt(alpha_bar)
        x_t = x * scale_in
        output = self.model(x_t, t.to(x.dtype), cond)
        sigma_b = sigma.reshape(shape).to(x.dtype)
        if self.prediction == "epsilon":
            return x - sigma_b * output
        if self.prediction == "sample":
            return output
        # v = sqrt(ab) eps - sqrt(1 - ab) x_0  =>  x_0 = sqrt(ab) x_t - sqrt(1 - ab) v; sqrt(1 - ab) = sigma sqrt(ab)
        return scale_in * x_t - sigma_b * scale_in * output

    def null_cond(self, cond: Any) -> Any:
        if self._null_cond is None:
            raise ValueError("this model has no unconditional mode, so guidance must be 1 (no guidance)")
        return self._null_cond(cond)
