"""Per-step progress of one generation: denoising steps counted over every pass, and optional previews.

The caller passes in what it wants to hear (``on_step(done, total)``, a ``Previews``); nothing is registered
globally, so two generations in one process never see each other's steps. The engine hands
``StepProgress.kwargs(pipe)`` to every pass it runs (first pass, refiner, hires fix, ControlNet) as diffusers'
``callback_on_step_end``.

A preview is the VAE decode of the scheduler's current estimate of the clean latents x0 (the "denoised" of
k-diffusion's callback, diffusers' ``pred_original_sample``), downscaled to fit ``max_side``: it shows the final
composition long before the last step, where the noisy latents x_t would mostly show noise. diffusers' pipelines do
not hand x0 to their step callback, so ``DenoisedTap`` reads it from the request's own scheduler instance (the engine
gives every request a fresh one): from the tuple its ``step`` returns (Euler, Euler a, Heun, DDIM, LMS, DDPM, LCM)
or from the x0 history of the multistep solvers (DPM++ 2M/SDE, UniPC). Where a scheduler exposes neither (PNDM,
DEIS, and the first step of a pass whose scheduler was swapped in mid-run) the preview decodes x_t instead. Packed
latents (Flux) get no previews. A preview is a full VAE decode of the previewed images, which is why previews are
asked for explicitly (``Previews.every``) rather than made every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

X0_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")  # DPMSolver*'s algorithm types whose model_outputs hold x0


@dataclass(frozen=True)
class Previews:
    """Ask for previews: after every ``every``-th denoising step, ``on_preview(done, images)`` with one image per
    entry of ``indices`` (positions in the pipeline call's batch; those past its end are left out)."""

    every: int
    on_preview: Callable[[int, list["Image.Image"]], None]
    indices: tuple[int, ...] = (0,)
    max_side: int = 256  # previews are shrunk (never enlarged) to fit in max_side x max_side

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every: must be >= 1 (steps between previews); got {self.every}")
        if self.max_side < 8:
            raise ValueError(f"max_side: must be >= 8; got {self.max_side}")
        if not self.indices:
            raise ValueError("indices: must name at least one image")


def denoised_of(scheduler, output) -> Optional[torch.Tensor]:
    """The x0 estimate of the step that returned ``output``, or None when the scheduler does not expose it."""
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]  # (prev_sample, pred_original_sample) of return_dict=False
    for name in ("pred_original_sample", "denoised"):  # return_dict=True
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    history = getattr(scheduler, "model_outputs", None)
    config = getattr(scheduler, "config", {})
    if history and history[-1] is not None and (config.get("algorithm_type") in X0_ALGORITHMS
                                                or config.get("predict_x0") is True):
        return history[-1]  # DPM-Solver++ and UniPC keep their converted model outputs, which are x0
    return None


class DenoisedTap:
    """Remembers the x0 estimate of the last ``step`` of the schedulers it is attached to (instance attributes on
    those schedulers only, removed by ``detach``)."""

    def __init__(self) -> None:
        self.latest: Optional[torch.Tensor] = None
        self._schedulers: list[Any] = []

    def attach(self, scheduler) -> bool:
        """Start watching ``scheduler``; False when it was already watched."""
        if any(watched is scheduler for watched in self._schedulers):
            return False
        original = scheduler.step

        def step(*args, **kwargs):
            output = original(*args, **kwargs)
            self.latest = denoised_of(scheduler, output)
            return output

        scheduler.step = step
        self._schedulers.append(scheduler)
        self.latest = None
        return True

    def detach(self) -> None:
        for scheduler in self._schedulers:
            scheduler.__dict__.pop("step", None)  # the class's step shows through again
        self._schedulers.clear()
        self.latest = None


def decode_previews(pipe, latents: torch.Tensor, indices: tuple[int, ...], max_side: int) -> list["Image.Image"]:
    """VAE-decoded images of ``latents[indices]`` (B, C, h, w), shrunk to fit ``max_side``; [] for latents the VAE
    cannot take (packed Flux latents, another channel count)."""
    from PIL import Image

    vae = getattr(pipe, "vae", None)
    if vae is None or latents.ndim != 4 or latents.shape[1] != vae.config.latent_channels:
        return []
    chosen = [index for index in indices if index < latents.shape[0]]
    if not chosen:
        return []
    selected = latents[chosen].to(device=vae.device, dtype=vae.dtype)  # (P, C, h, w)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        decoded = vae.decode(selected / vae.config.scaling_factor + shift, return_dict=False)[0]  # (P, 3, H, W)
    images = pipe.image_processor.postprocess(torch.nan_to_num(decoded.float()), output_type="pil")
    for image in images:
        image.thumbnail((max_side, max_side), Image.LANCZOS)  # in place; keeps the aspect ratio, never enlarges
    return images


class StepProgress:
    """Counts denoising steps over every pass against the planned total; reports them and makes previews."""

    def __init__(self, on_step: Optional[Callable[[int, int], None]], total: int,
                 previews: Optional[Previews] = None):
        self.on_step, self.total, self.previews, self.done = on_step, total, previews, 0
        self._tap = DenoisedTap()

    def kwargs(self, pipe) -> dict[str, Any]:
        """The keyword arguments for a call of ``pipe`` (one pass): its step callback, if anything listens."""
        if self.on_step is None and self.previews is None:
            return {}
        if self.previews is not None:
            self._tap.attach(pipe.scheduler)
        return {"callback_on_step_end": self._callback}

    def close(self) -> None:
        """Stop watching the schedulers (call when the generation ends, however it ends)."""
        self._tap.detach()

    def _callback(self, pipe, step, timestep, tensors):
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, max(self.total, self.done))  # may raise to stop the generation
        if self.previews is not None:
            # a scheduler swapped in for this pass (hires fix, refiner) is watched from its next step on
            fresh = self._tap.attach(pipe.scheduler)
            if self.done % self.previews.every == 0:
                x0 = None if fresh else self._tap.latest
                latents = x0 if x0 is not None else tensors["latents"]
                images = decode_previews(pipe, latents, self.previews.indices, self.previews.max_side)
                if images:
                    self.previews.on_preview(self.done, images)
        return tensors
