"""Sampling from a trained difflab checkpoint: labels + sampler + step grid + seeds -> images.

Sample i is drawn with its own CPU generator seeded ``seed + i``, for its starting noise and for every noise draw
of ancestral samplers, so a sample is the same whether it is drawn alone or in a batch of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from difflab.core.checkpoint import LoadedModel
from difflab.core.denoiser import DiscreteTimeDenoiser
from difflab.core.samplers import SAMPLERS, SamplerStep, get_sampler, initial_noise
from difflab.core.timesteps import SPACINGS, get_sigmas

MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class SampleRequest:
    """What to draw: ``labels`` (one per sample; None = unconditional) and how to draw it."""

    labels: tuple[int | None, ...]
    sampler: str = "dpmpp-2m"
    steps: int = 20
    guidance: float = 3.0
    seed: int = 0
    karras: bool = False
    spacing: str = "trailing"
    eta: float | None = None  # DDIM / Euler-ancestral noise; None = the sampler's default

    def validate(self, model: LoadedModel) -> None:
        get_sampler(self.sampler)
        if not 1 <= len(self.labels) <= MAX_SAMPLES:
            raise ValueError(f"number of samples must be between 1 and {MAX_SAMPLES}; got {len(self.labels)}")
        if not 1 <= self.steps <= model.schedule.num_timesteps:
            raise ValueError(f"steps must be between 1 and {model.schedule.num_timesteps}; got {self.steps}")
        if not (self.guidance >= 0 and self.guidance < float("inf")):  # also rejects NaN
            raise ValueError(f"guidance must be a finite number >= 0; got {self.guidance}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}; got {self.spacing!r}")
        if self.eta is not None and self.sampler not in ("ddim", "euler-ancestral"):
            raise ValueError(f"eta applies to the ddim and euler-ancestral samplers only, not {self.sampler!r}")
        num_classes = model.spec.unet.num_classes
        for label in self.labels:
            if label is None:
                continue
            if num_classes is None:
                raise ValueError("label: this model is unconditional; leave the label out")
            if not 0 <= label < num_classes:
                raise ValueError(f"label must be in 0..{num_classes - 1}; got {label}")


def denoiser_for(model: LoadedModel) -> DiscreteTimeDenoiser:
    num_classes = model.spec.unet.num_classes

    def network(x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return model.model(x_t, t, labels)

    def null_labels(labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, num_classes)

    return DiscreteTimeDenoiser(
        network, model.schedule, model.spec.prediction, null_cond=null_labels if num_classes is not None else None
    )


def sample_steps(model: LoadedModel, request: SampleRequest) -> Iterator[SamplerStep]:
    """Yield every sampler step for the request; the last step's ``x`` (B, C, H, W) holds the samples in [-1, 1]."""
    request.validate(model)
    config = model.spec.unet
    sigmas = get_sigmas(model.schedule, request.steps, karras=request.karras, spacing=request.spacing)  # type: ignore[arg-type]
    generators = [torch.Generator().manual_seed(request.seed + i) for i in range(len(request.labels))]
    shape = (len(request.labels), config.in_channels, config.image_size, config.image_size)
    x = initial_noise(shape, float(sigmas[0]), generator=generators)
    cond, guidance = None, 1.0
    if config.num_classes is not None:
        # unconditional samples in a conditional model use the null class
        cond = torch.tensor([config.num_classes if label is None else label for label in request.labels])
        guidance = request.guidance
    options = {} if request.eta is None else {"eta": request.eta}
    with torch.inference_mode():
        yield from SAMPLERS[request.sampler](
            denoiser_for(model), x, sigmas, cond=cond, guidance=guidance, generator=generators, **options
        )


def sample_images(model: LoadedModel, request: SampleRequest) -> torch.Tensor:
    x = None
    for step in sample_steps(model, request):
        x = step.x
    assert x is not None
    return x.clamp(-1, 1)
