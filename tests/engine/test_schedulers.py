"""A1111 sampler names -> diffusers schedulers."""

from __future__ import annotations

import pytest
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from difflab.engine.schedulers import SAMPLER_NAMES, SAMPLER_SPECS, make_scheduler, resolve_sampler, sampler_name_of

SD_CONFIG = dict(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1).config)


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "dpmpp-2m-karras", "dpmpp_2m_karras", "k_dpmpp_2m_ka",
                                  "  dpm++ 2m karras "])
def test_names_and_aliases_resolve(name: str) -> None:
    assert resolve_sampler(name).name == "DPM++ 2M Karras"


def test_euler_a_spellings() -> None:
    for name in ("Euler a", "euler-a", "euler-ancestral", "k_euler_a", "EULER A"):
        assert resolve_sampler(name).scheduler == "EulerAncestralDiscreteScheduler"
    assert resolve_sampler("Euler").scheduler == "EulerDiscreteScheduler"


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"scheduler must be one of 'DPM\+\+ 2M'.*'UniPC'.*got 'warp drive'"):
        resolve_sampler("warp drive")


def test_aliases_are_unambiguous() -> None:
    seen: dict[str, str] = {}
    for spec in SAMPLER_SPECS:
        for alias in (spec.name, *spec.aliases):
            spec_of = resolve_sampler(alias)
            assert spec_of is spec, f"{alias!r} resolves to {spec_of.name}, not {spec.name}"
            assert seen.setdefault(alias.lower(), spec.name) == spec.name


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_builds_from_a_model_config(name: str) -> None:
    scheduler = make_scheduler(name, SD_CONFIG)
    assert type(scheduler).__name__ == resolve_sampler(name).scheduler
    # the model's training schedule and parameterisation carry over
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert getattr(scheduler.config, "use_karras_sigmas", False) == name.endswith("Karras")
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) >= 10


def test_karras_does_not_leak_from_the_base_config() -> None:
    karras_base = dict(make_scheduler("DPM++ 2M Karras", SD_CONFIG).config)
    plain = make_scheduler("DPM++ 2M", karras_base)
    assert isinstance(plain, DPMSolverMultistepScheduler) and not plain.config.use_karras_sigmas
    assert isinstance(make_scheduler("Euler a", karras_base), EulerAncestralDiscreteScheduler)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_a_saved_scheduler_config_is_named_back(name: str) -> None:
    """What a diffusers folder saves for each sampler (its scheduler_config.json, as save_pretrained writes it) is
    read back as that sampler's A1111 name: the PNG of a model's own scheduler says which sampler it was."""
    config = dict(make_scheduler(name, SD_CONFIG).config)
    config["_class_name"] = resolve_sampler(name).scheduler
    assert sampler_name_of(config) == name


def test_a_scheduler_config_a1111_has_no_name_for_is_none() -> None:
    assert sampler_name_of({"_class_name": "FlowMatchEulerDiscreteScheduler"}) is None
    third_order = dict(make_scheduler("DPM++ 2M", SD_CONFIG).config, _class_name="DPMSolverMultistepScheduler",
                       solver_order=3)
    assert sampler_name_of(third_order) is None
