"""Sampler names as AUTOMATIC1111 users know them, mapped to diffusers schedulers.

A1111 names ("Euler a", "DPM++ 2M Karras") are what people type, paste from model pages and find in PNG
metadata; diffusers names the scheduler classes instead. The table follows diffusers' own mapping (the
"Schedulers" overview page and diffusers issue #4167). Short aliases ("euler-a", "dpmpp-2m-karras") and the
k-diffusion spellings A1111 accepts in its API ("k_euler_a") resolve to the same entry. An unknown name is an
error that lists the choices: silently swapping in another sampler would make an image unreproducible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers class and the config overrides that make it that sampler."""

    name: str  # A1111's display name, written into PNG metadata
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_KARRAS = {"use_karras_sigmas": True}
SAMPLER_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                ("dpmpp-2m", "k_dpmpp_2m")),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", "solver_order": 2, **_KARRAS}, ("dpmpp-2m-karras", "k_dpmpp_2m_ka")),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                ("dpmpp-2m-sde", "k_dpmpp_2m_sde")),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **_KARRAS},
                ("dpmpp-2m-sde-karras",)),
    SamplerSpec("DPM++ SDE", "DPMSolverSinglestepScheduler", {}, ("dpmpp-sde", "k_dpmpp_sde")),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", dict(_KARRAS), ("dpmpp-sde-karras",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm2", "k_dpm_2")),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", dict(_KARRAS), ("dpm2-karras",)),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("dpm2-a", "k_dpm_2_a")),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", dict(_KARRAS), ("dpm2-a-karras",)),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("euler", "k_euler")),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler-a", "euler-ancestral", "k_euler_a")),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("heun", "k_heun")),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("lms", "k_lms")),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", dict(_KARRAS), ("lms-karras",)),
    SamplerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SamplerSpec("DDPM", "DDPMScheduler", {}, ("ddpm",)),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("plms", "pndm")),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    SamplerSpec("DEIS", "DEISMultistepScheduler", {}, ("deis",)),
    SamplerSpec("LCM", "LCMScheduler", {}, ("lcm",)),
)
SAMPLER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SAMPLER_SPECS)


def _key(name: str) -> str:
    """Case, spaces, '-', '_' and '+' written as 'p' do not matter: "DPM++ 2M Karras" = "dpmpp_2m_karras"."""
    return re.sub(r"[\s_\-]+", "", name.lower().replace("+", "p"))


_BY_KEY: dict[str, SamplerSpec] = {}
for _spec in SAMPLER_SPECS:
    for _name in (_spec.name, *_spec.aliases):
        _BY_KEY[_key(_name)] = _spec


def resolve_sampler(name: str) -> SamplerSpec:
    """The sampler an A1111 name or alias means; ValueError listing the choices otherwise."""
    spec = _BY_KEY.get(_key(name))
    if spec is None:
        raise ValueError(f"scheduler must be one of {', '.join(repr(n) for n in SAMPLER_NAMES)}; got {name!r}")
    return spec


def make_scheduler(name: str, base_config: dict[str, Any]):
    """A diffusers scheduler for ``name``, built from a model's own scheduler config (its betas, prediction type,
    timestep spacing) with the sampler's options on top, as diffusers' ``from_config`` swapping does."""
    import diffusers

    spec = resolve_sampler(name)
    scheduler_class = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    # a karras option from the model's previous scheduler must not leak into a sampler that is not Karras
    config.pop("use_karras_sigmas", None)
    return scheduler_class.from_config(config, **spec.options)


def sampler_name_of(config: dict[str, Any]) -> str | None:
    """The A1111 name of a saved diffusers scheduler config, when one of SAMPLER_SPECS is exactly it (same class,
    every option of the spec equal, Karras sigmas on or off alike); None otherwise. What the PNG says for a model's
    own scheduler, so that A1111 and ``difflab replay`` read a sampler they know instead of "model default"."""
    for spec in SAMPLER_SPECS:
        if config.get("_class_name") != spec.scheduler:
            continue
        if bool(config.get("use_karras_sigmas", False)) != bool(spec.options.get("use_karras_sigmas", False)):
            continue
        if all(config.get(key) == value for key, value in spec.options.items()):
            return spec.name
    return None
