"""Generation with ControlNets: request checks, control maps, the conditioned run, and what metadata records.

One or several ControlNets (multi-ControlNet: their residuals are summed, each times its own scale) steer a
txt2img run of the cached pipeline. The ControlNet pipeline class is built over the cached pipeline's modules
(``pipeline.control_pipeline``), so adding a control never reloads the base model; ControlNet modules are cached
beside it. ``control_start``/``control_end`` are the fraction of the steps during which the ControlNets act
(diffusers' control_guidance_start/end: step i of N is controlled when start <= i/N and (i+1)/N <= end). Guess
mode (ControlNet without the prompt on the conditional branch) stays off.

Image i of a request still uses its own generator seeded ``seed + i``; the control maps are the same for every
image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from difflab.engine.control import ControlSpec
    from difflab.engine.control_models import ResolvedControlNet
    from difflab.engine.pipeline import PipelineCache, Settings
    from difflab.engine.progress import Previews
    from difflab.engine.request import GenerationRequest

RESIZE_MODE = "Just Resize"  # A1111's name for what control.resized does (same aspect ratio, so nothing is cut)
INCOMPATIBLE_FIELDS = ("init_image", "refiner", "hires_scale")  # ControlNet runs as txt2img here


@dataclass(frozen=True)
class PreparedControl:
    """A control ready to run: its spec, the ControlNet found for it, and its map at the output size."""

    index: int
    spec: "ControlSpec"
    controlnet: "ResolvedControlNet"
    map: "Image.Image"


# ---- at the edge (GenerationRequest's validator) ----

def check_request_controls(request: "GenerationRequest") -> None:
    from difflab.engine.modes import load_image

    if not request.controls:
        for name, default in (("control_start", 0.0), ("control_end", 1.0)):
            if getattr(request, name) != default:
                raise ValueError(f"{name}: needs controls (the ControlNets it times)")
        return
    if request.control_start >= request.control_end:
        raise ValueError(f"control_start: {request.control_start} must be below control_end ({request.control_end})")
    for name in INCOMPATIBLE_FIELDS:
        if getattr(request, name) is not None:
            raise ValueError(f"controls: ControlNet runs with text-to-image only for now; drop {name}")
    for index, spec in enumerate(request.controls):
        load_image(spec.image, f"controls.{index}.image")  # exists and decodes, before any model loads


# ---- before the base model loads ----

def prepare_controls(settings: "Settings") -> list[PreparedControl]:
    """Find every control's ControlNet and make its map at the output size; errors name the control's field."""
    from difflab.engine.control import check_available, preprocess, resized
    from difflab.engine.control_models import resolve_controlnet
    from difflab.engine.modes import load_image

    request, prepared = settings.request, []
    for index, spec in enumerate(request.controls):
        controlnet = resolve_controlnet(spec.model, spec.kind, settings.model, f"controls.{index}.model")
        try:
            check_available(spec.kind, request.allow_unsafe_pickle)
        except ValueError as error:
            raise ValueError(f"controls.{index}.kind: {error}") from None
        field = f"controls.{index}.image"
        picture = resized(load_image(spec.image, field), settings.width, settings.height, field)
        low, high = spec.thresholds()
        control_map = preprocess(spec.kind, picture, low, high, allow_unsafe_pickle=request.allow_unsafe_pickle)
        prepared.append(PreparedControl(index, spec, controlnet, control_map))
    return prepared


# ---- running ----

def control_call(settings: "Settings", controls: list[PreparedControl]) -> dict[str, Any]:
    """The ControlNet keyword arguments of the family's pipeline: one value per ControlNet, lists for several."""
    request = settings.request
    maps = [control.map for control in controls]
    scales = [control.spec.scale for control in controls]
    single = len(controls) == 1
    call: dict[str, Any] = {
        "controlnet_conditioning_scale": scales[0] if single else scales,
        "control_guidance_start": request.control_start if single else [request.control_start] * len(controls),
        "control_guidance_end": request.control_end if single else [request.control_end] * len(controls),
    }
    if settings.model.family == "flux":
        call["control_image"] = maps[0] if single else maps  # Flux ControlNets have no guess mode
    else:
        call["image"], call["guess_mode"] = (maps[0] if single else maps), False
    return call


def generate(
    pipeline,
    settings: "Settings",
    kwargs: dict[str, Any],
    cache: "PipelineCache",
    controls: list[PreparedControl],
    on_step: Optional[Callable[[int, int], None]] = None,
    previews: Optional["Previews"] = None,
) -> list:
    """Draw the request's images through the family's ControlNet pipeline over ``pipeline``'s modules."""
    from difflab.engine.control_models import check_fits
    from difflab.engine.modes import with_prompt
    from difflab.engine.pipeline import control_pipeline
    from difflab.engine.progress import StepProgress
    from difflab.engine.prompt_weighting import prompt_arguments

    family = settings.model.family
    # 1. ControlNet modules (cached), checked against the base's denoiser before they meet in a matmul
    modules = [cache.get_controlnet(control.controlnet) for control in controls]
    for control, module in zip(controls, modules):
        check_fits(module, pipeline, f"controls.{control.index}.model")
    # 2. The ControlNet pipeline over the cached modules, the prompt (weighted where asked), the control inputs
    controlled = control_pipeline(pipeline, modules, family)
    call = with_prompt(kwargs, prompt_arguments(controlled, family, settings.request))
    call.update(control_call(settings, controls))
    progress = StepProgress(on_step, settings.steps, previews)
    call.update(progress.kwargs(controlled))
    # 3. Denoise: per step, every ControlNet reads (latents, t, prompt, map) and adds its scaled residuals
    try:
        return controlled(**call).images
    finally:
        progress.close()


# ---- metadata ----

def infotext(settings: "Settings", controls: list[PreparedControl]) -> dict[str, str]:
    """A1111 sd-webui-controlnet's infotext, one ``ControlNet N`` entry per unit (quoted by format_parameters)."""
    from difflab.engine.control_models import controlnet_hash
    from difflab.engine.metadata import format_controlnet_unit

    request, values = settings.request, {}
    for control in controls:
        low, high = control.spec.thresholds()
        short = controlnet_hash(control.controlnet.path)
        name = Path(control.controlnet.name).name + (f" [{short}]" if short else "")
        values[f"ControlNet {control.index}"] = format_controlnet_unit({
            "Module": control.spec.kind, "Model": name, "Weight": control.spec.scale, "Resize Mode": RESIZE_MODE,
            "Processor Res": min(settings.width, settings.height), "Threshold A": low, "Threshold B": high,
            "Guidance Start": request.control_start, "Guidance End": request.control_end,
            "Pixel Perfect": False, "Control Mode": "Balanced",  # Balanced = guess mode off
        })
    return values


def record(settings: "Settings", controls: list[PreparedControl]) -> list[dict[str, Any]]:
    """Every control as it ran: files by path and SHA-256, the ControlNet's folder and hash, the map's hash."""
    import hashlib

    from difflab.engine.control_models import controlnet_hash
    from difflab.engine.modes import file_sha256

    request, rows = settings.request, []
    for control in controls:
        low, high = control.spec.thresholds()
        rows.append({
            "kind": control.spec.kind, "scale": control.spec.scale, "low": low, "high": high,
            "image": {"path": str(Path(control.spec.image).expanduser().resolve()),
                      "sha256": file_sha256(control.spec.image)},
            "model": {"name": control.controlnet.name, "path": str(control.controlnet.path),
                      "class": control.controlnet.class_name, "hash": controlnet_hash(control.controlnet.path)},
            "map_sha256": hashlib.sha256(control.map.tobytes()).hexdigest(),  # the map the ControlNet saw
            "start": request.control_start, "end": request.control_end, "guess_mode": False,
        })
    return rows
