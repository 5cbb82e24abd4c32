"""Regenerate an image from the metadata inside its PNG, and say how close the new image is to the old one.

difflab's own ``difflab`` JSON record holds the whole request, so replay re-runs exactly that request. Image i of
a request of n is re-run *as image i of a request of n* by default: the per-image seed (``seed + i``) makes an
image independent of its batch mathematically, but CPU conv/attention kernels choose their blocking by batch size,
so the same image drawn alone can differ by 1/255 (measured in tests/engine/test_pipeline.py). Re-running the
layout costs n images and buys bit-identity on the same device and library versions; ``alone=True`` trades that
for speed. An image with only an A1111 ``parameters`` chunk (from A1111 itself, or a stripped difflab image) is
replayed from that text: the nearest difflab request, with no promise of identity.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from difflab.engine.device import Placement, choose_placement
from difflab.engine.metadata import parse_lora_tags, parse_parameters, read_png_metadata
from difflab.engine.request import GenerationRequest, RequestError, build_request

FROM_RECORD = "difflab record"
FROM_PARAMETERS = "A1111 parameters"


@dataclass(frozen=True)
class ReplayPlan:
    """What to run to get the image back: ``request``'s image ``index`` is the one to compare."""

    image: Path
    request: GenerationRequest
    index: int
    source: str  # FROM_RECORD or FROM_PARAMETERS
    warnings: tuple[str, ...] = ()
    recorded_model_hash: Optional[str] = None
    recorded: dict[str, Any] = field(default_factory=dict)  # the JSON record, {} when replaying A1111 text


@dataclass(frozen=True)
class Comparison:
    max_difference: Optional[int]  # largest |new - old| over pixels and channels, in 1/255; None if sizes differ
    differing_pixels: int
    size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def identical(self) -> bool:
        return self.max_difference == 0

    def describe(self) -> str:
        if self.max_difference is None:
            return f"differs: size {self.size[0]}x{self.size[1]}, original {self.original_size[0]}x{self.original_size[1]}"
        if self.identical:
            return "bit-identical (max difference 0/255)"
        total = self.size[0] * self.size[1]
        return f"differs: max difference {self.max_difference}/255, {self.differing_pixels} of {total} pixels"


def plan_replay(image: str | Path, *, model: Optional[str] = None, alone: bool = False,
                placement: Optional[Placement] = None) -> ReplayPlan:
    """Read ``image``'s metadata and build the request that regenerates it. ``model`` replaces the recorded model
    (a moved folder, or an A1111 checkpoint name that means nothing here); ``alone`` runs only this image;
    ``placement`` is where it will run (default: the automatic choice), compared with the recorded one."""
    image = Path(image)
    parameters, record = read_png_metadata(image)
    if record is not None:
        plan = _plan_from_record(image, record, parameters, model, placement or choose_placement())
    elif parameters is not None:
        plan = _plan_from_parameters(image, parameters, model)
    else:
        raise ValueError(f"image {str(image)!r} carries no generation metadata (no 'difflab' or 'parameters' chunk)")
    if alone and plan.request.n > 1:
        request = plan.request.model_copy(update={"n": 1, "seed": plan.request.seed + plan.index})
        note = (f"replaying image {plan.index} of {plan.request.n} alone (seed {request.seed}): kernels that are not "
                "batch-invariant (this CPU's) may change it by about 1/255")
        return replace(plan, request=request, index=0, warnings=plan.warnings + (note,))
    return plan


def _plan_from_record(image: Path, record: dict, parameters: Optional[str], model: Optional[str],
                      placement: Placement) -> ReplayPlan:
    fields = dict(record.get("request") or {})
    if not fields:
        raise ValueError(f"image {str(image)!r}: its difflab record has no request")
    index = int(record.get("image_index", 0))
    warnings: list[str] = []
    fields["model"] = _usable_model(fields.get("model"), record.get("settings", {}).get("model_path"), model, warnings)
    mode = record.get("mode") or {}
    for name in ("init_image", "mask"):  # given relative to where generate ran; the record also has it absolute
        recorded = mode.get(name) if isinstance(mode.get(name), dict) else {}
        if fields.get(name) and not Path(fields[name]).expanduser().is_file() and Path(recorded.get("path", "")).is_file():
            fields[name] = recorded["path"]
    try:
        request = build_request(**fields)
    except RequestError as error:  # a record written by another difflab version, or edited by hand
        raise ValueError(f"image {str(image)!r}: its recorded request is not valid here: {error}") from None
    if not 0 <= index < request.n:
        raise ValueError(f"image {str(image)!r}: image_index {index} is outside its request of n={request.n}")
    warnings += _environment_warnings(record, placement) + _input_warnings(record)
    batch = record.get("batch")
    if batch:  # the server drew it in one call with other requests (engine.merged)
        warnings.append(f"drawn in one call with {batch['requests'] - 1} other request(s) ({batch['images']} images); "
                        "replaying its own request may change it by about 1/255")
    recorded_hash = parse_parameters(parameters)[2].get("Model hash") if parameters else None
    return ReplayPlan(image, request, index, FROM_RECORD, tuple(warnings), recorded_hash, record)


def _usable_model(recorded: Optional[str], recorded_path: Optional[str], override: Optional[str],
                  warnings: list[str]) -> str:
    """The model to load: the override, else the recorded name, else the recorded path if the name no longer
    resolves (a relative folder replayed from another directory)."""
    from difflab.engine.registry import ModelNotAvailable, resolve_model

    if override is not None:
        if override != recorded:
            warnings.append(f"model: using {override!r} instead of the recorded {recorded!r}")
        return override
    try:
        resolve_model(recorded or "")
        return recorded or ""
    except ModelNotAvailable:
        raise
    except ValueError:
        if recorded_path and Path(recorded_path).exists():
            warnings.append(f"model: {recorded!r} does not resolve here; using its recorded path {recorded_path}")
            return recorded_path
        raise ValueError(f"model: the recorded model {recorded!r} is not found here; pass --model") from None


def _environment_warnings(record: dict, placement: Placement) -> list[str]:
    """One warning per recorded version or environment detail that differs from this process's."""
    import diffusers
    import torch
    import transformers

    from difflab import __version__

    now = {"difflab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "device": placement.describe(), "machine": platform.machine(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    then = {**record.get("versions", {}), **record.get("environment", {})}
    warnings = [f"{key}: recorded {then[key]}, running {value}; bit-identity is not expected"
                for key, value in now.items() if then.get(key) is not None and str(then[key]) != str(value)]
    missing = [key for key in ("device", "cpu_capability") if then.get(key) is None]
    if missing:
        warnings.append(f"the record does not say its {' and '.join(missing)} (written by an older difflab)")
    return warnings


def _input_warnings(record: dict) -> list[str]:
    """Init image, mask and LoRA files whose content changed since the image was made (same path, new bytes)."""
    from difflab.engine.lora import lora_hash
    from difflab.engine.modes import file_sha256

    warnings = []
    mode = record.get("mode") or {}
    for name in ("init_image", "mask"):
        entry = mode.get(name)
        if isinstance(entry, dict) and Path(entry.get("path", "")).is_file() and \
                file_sha256(entry["path"]) != entry.get("sha256"):
            warnings.append(f"{name}: {entry['path']} has changed since the image was made; the result will differ")
    for lora in record.get("loras") or []:
        file = Path(lora.get("file", ""))
        if file.is_file() and lora_hash(file) != lora.get("hash"):
            warnings.append(f"lora {lora.get('name')!r}: {file} has changed since the image was made (hash "
                            f"{lora.get('hash')}, now {lora_hash(file)}); the result will differ")
    return warnings


def _plan_from_parameters(image: Path, parameters: str, model: Optional[str]) -> ReplayPlan:
    prompt, negative, settings = parse_parameters(parameters)
    if not settings:
        raise ValueError(f"image {str(image)!r}: its parameters text has no settings line (Steps, Sampler, Seed, ...)")
    prompt, loras = parse_lora_tags(prompt)  # A1111 (and difflab) write LoRAs as <lora:name:weight> prompt tags
    hires_warning = None
    fields: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative,
                              "loras": [f"{name}:{weight:g}" for name, weight in loras]}
    for key, name, convert in (("Steps", "steps", int), ("CFG scale", "guidance", float), ("Seed", "seed", int)):
        if key in settings:
            fields[name] = _convert(settings[key], convert, key)
    if "Guidance end" in settings:
        fields["guidance_end"] = _convert(settings["Guidance end"], float, "Guidance end")
    if "Clip skip" in settings:
        fields["clip_skip"] = _convert(settings["Clip skip"], int, "Clip skip")
    if "Size" in settings:
        width, _, height = settings["Size"].partition("x")
        fields["width"], fields["height"] = _convert(width, int, "Size"), _convert(height, int, "Size")
    if "Hires upscale" in settings and "Init image hash" not in settings:  # A1111's txt2img hires fix
        fields["hires_scale"] = _convert(settings["Hires upscale"], float, "Hires upscale")
        if "Denoising strength" in settings:
            fields["hires_strength"] = _convert(settings["Denoising strength"], float, "Denoising strength")
        if "Hires steps" in settings:
            fields["hires_steps"] = _convert(settings["Hires steps"], int, "Hires steps")
        if settings.get("Hires upscaler", "Lanczos") != "Lanczos":
            from difflab.engine.upscalers.registry import resolve_upscaler

            try:
                resolve_upscaler(settings["Hires upscaler"], allow_paths=False)
                fields["hires_upscaler"] = settings["Hires upscaler"]
            except ValueError:
                hires_warning = (f"hires upscaler {settings['Hires upscaler']!r} is not available here "
                                 "(put it in $DIFFLAB_UPSCALER_DIR); replaying with Lanczos")
    sampler = settings.get("Sampler")
    if sampler and sampler != "model default":
        # A1111 >= 1.9 writes the schedule separately: "Sampler: DPM++ 2M, Schedule type: Karras"
        if settings.get("Schedule type", "").lower() == "karras" and "karras" not in sampler.lower():
            sampler += " Karras"
        fields["scheduler"] = sampler
    warnings = [hires_warning] if hires_warning else []
    if "Init image hash" in settings or ("Denoising strength" in settings and "Hires upscale" not in settings):
        warnings.append("made from an init image (img2img or inpainting) that the parameters text does not carry; "
                        "replaying as txt2img")
    if not settings.get("Version", "").startswith("difflab"):
        warnings.append("not made by difflab: its sampler and noise implementation differ, expect a different image")
    from difflab.engine.registry import resolve_model

    if model is None:
        if settings.get("Model") is None:
            raise ValueError("model: the parameters text names no model; pass --model")
        try:
            resolve_model(settings["Model"])  # A1111 names a checkpoint file's stem, which rarely means anything here
        except ValueError as error:
            raise ValueError(f"model: {settings['Model']!r} from the parameters is not usable here ({error}); "
                             "pass --model") from None
    fields["model"] = model or settings["Model"]
    try:
        request = build_request(**fields)
    except RequestError as error:
        raise ValueError(f"image {str(image)!r}: its parameters do not make a valid request: {error}") from None
    return ReplayPlan(image, request, 0, FROM_PARAMETERS, tuple(warnings), settings.get("Model hash"))


def _convert(value: str, convert: Callable, key: str):
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"{key}: {value!r} in the parameters text is not a number") from None


def model_warnings(plan: ReplayPlan) -> list[str]:
    """A warning when the weights' hash differs from the one the image records (a retrained or other model)."""
    from difflab.engine.outputs import model_hash
    from difflab.engine.registry import resolve_model

    if not plan.recorded_model_hash:
        return []
    now = model_hash(resolve_model(plan.request.model).path)
    if now and now != plan.recorded_model_hash:
        return [f"model hash: recorded {plan.recorded_model_hash}, these weights {now}; a different model"]
    return []


def compare(new, original_path: Path) -> Comparison:
    """Pixel comparison in RGB (alpha and palette are not part of a generated image)."""
    from PIL import Image

    with Image.open(original_path) as original:
        old = np.asarray(original.convert("RGB"), dtype=np.int16)
    now = np.asarray(new.convert("RGB"), dtype=np.int16)
    size, original_size = (now.shape[1], now.shape[0]), (old.shape[1], old.shape[0])
    if now.shape != old.shape:
        return Comparison(None, 0, size, original_size)
    difference = np.abs(now - old)  # (H, W, 3)
    return Comparison(int(difference.max()), int((difference.max(axis=-1) > 0).sum()), size, original_size)


@dataclass
class ReplayOutcome:
    plan: ReplayPlan
    comparison: Comparison
    png: bytes  # the regenerated image with its own metadata, ready to write
    seconds: float


def replay(plan: ReplayPlan, cache, *, on_step: Optional[Callable[[int, int], None]] = None) -> ReplayOutcome:
    """Run the plan's request, keep image ``plan.index``, and compare it with the original file."""
    from difflab.engine.outputs import image_png
    from difflab.engine.pipeline import run

    result = run(plan.request, cache, on_step=on_step)
    comparison = compare(result.images[plan.index], plan.image)
    return ReplayOutcome(plan, comparison, image_png(result, plan.index, cache.placement), result.seconds)
