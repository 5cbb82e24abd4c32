"""Generation modes over one cached pipeline: txt2img, img2img, inpainting, SDXL base + refiner, hires fix.

The mode comes from the request (``init_image`` -> img2img, ``mask`` -> inpainting). The img2img and inpainting
pipelines are built with ``AutoPipelineFor*.from_pipe`` from the cached text-to-image pipeline: they share its
modules, so switching mode never reloads or copies weights.

Seeds: image i of a request uses its own CPU generator seeded ``seed + i`` in every pass (VAE-encoding the init
image, the starting noise, ancestral noise, the refiner, the hires pass), so an image does not depend on the batch
it was drawn in.

Inpainting pastes the original pixels back outside the mask (A1111's default overlay, without its mask blur): the
VAE round trip would otherwise blur the part of the image the user asked to keep.
"""

from __future__ import annotations

from pathlib import Path

from difflab.io.hashing import file_sha256  # noqa: F401  (imported from here by batch, replay, control_run)
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

from difflab.engine.request import DEFAULT_HIRES_STRENGTH, DEFAULT_REFINER_SWITCH, DEFAULT_STRENGTH

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from difflab.engine.pipeline import PipelineCache, Settings
    from difflab.engine.progress import Previews, StepProgress
    from difflab.engine.request import GenerationRequest

Mode = Literal["txt2img", "img2img", "inpaint"]
REFINER_BASE_FAMILIES = ("sdxl",)  # the ensemble hands latents over: base and refiner must share SDXL's VAE space
REFINER_FAMILIES = ("sdxl-refiner", "sdxl")


# ---- validation at the edge (called by GenerationRequest's validator) ----

def load_image(path: str, field: str, mode: str = "RGB") -> "Image.Image":
    """The decoded image at ``path``; a ValueError naming ``field`` when it is missing, not an image, or larger
    than width/height may be (engine.image_limits: checked on the file's header, before decoding)."""
    from difflab.engine.image_limits import decode_bounded

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{field}: file {path!r} does not exist")
    return decode_bounded(file, field, mode, label=repr(path))


def check_request_images(request: "GenerationRequest") -> None:
    """Every mode field makes sense with the others, and the images exist, decode and have compatible sizes."""
    if request.init_image is None:
        for name in ("strength", "mask"):
            if getattr(request, name) is not None:
                raise ValueError(f"{name}: needs init_image (the image it applies to)")
    if request.refiner_switch is not None and request.refiner is None:
        raise ValueError("refiner_switch: needs refiner (the model that takes over at the switch)")
    if request.hires_scale is None:
        for name in ("hires_strength", "hires_steps", "hires_upscaler"):
            if getattr(request, name) is not None:
                raise ValueError(f"{name}: needs hires_scale (hires fix is off without it)")
    if request.init_image is None:
        return
    init = load_image(request.init_image, "init_image")
    if request.width is None and request.height is None and (init.width % 8 or init.height % 8):
        raise ValueError(f"init_image: its size {init.width}x{init.height} is not a multiple of 8; "
                         "give width and height to resize it")
    if request.mask is not None:
        mask = load_image(request.mask, "mask", mode="L")
        if mask.size != init.size:
            raise ValueError(f"mask: size {mask.width}x{mask.height} differs from init_image's "
                             f"{init.width}x{init.height}")


def init_image_size(request: "GenerationRequest") -> Optional[tuple[int, int]]:
    """(width, height) of the init image, the default output size of img2img and inpainting."""
    if request.init_image is None:
        return None
    from difflab.engine.image_limits import open_bounded

    with open_bounded(Path(request.init_image).expanduser(), "init_image") as image:
        return image.size


# ---- effective values (what ran, and what metadata records) ----

def mode_of(request: "GenerationRequest") -> Mode:
    return "txt2img" if request.init_image is None else ("inpaint" if request.mask is not None else "img2img")


def strength_of(request: "GenerationRequest") -> Optional[float]:
    if request.init_image is None:
        return None
    return DEFAULT_STRENGTH if request.strength is None else request.strength


def refiner_switch_of(request: "GenerationRequest") -> Optional[float]:
    if request.refiner is None:
        return None
    return DEFAULT_REFINER_SWITCH if request.refiner_switch is None else request.refiner_switch


def hires_strength_of(request: "GenerationRequest") -> Optional[float]:
    if request.hires_scale is None:
        return None
    return DEFAULT_HIRES_STRENGTH if request.hires_strength is None else request.hires_strength


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The upscaled size, rounded to the nearest multiple of 8 (the VAE's factor)."""
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def denoising_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass runs: diffusers (and A1111) skip the first ``steps * (1 - strength)``."""
    return min(int(steps * strength), steps)


def total_steps(settings: "Settings") -> int:
    """Denoising steps over every pass, for progress bars."""
    request = settings.request
    strength = strength_of(request)
    total = settings.steps if strength is None else denoising_steps(settings.steps, strength)
    if request.hires_scale is not None:
        total += denoising_steps(request.hires_steps or settings.steps, hires_strength_of(request))
    return total


def check_settings(settings: "Settings") -> None:
    """Checks that need the model's defaults filled in (steps, family); still before any output exists."""
    request, family = settings.request, settings.model.family
    strength = strength_of(request)
    if strength is not None and denoising_steps(settings.steps, strength) < 1:
        raise ValueError(f"strength: {strength} of {settings.steps} steps leaves no denoising step; "
                         "raise strength or steps")
    if request.hires_scale is not None:
        from difflab.engine.image_limits import MAX_SIDE

        width, height = hires_size(settings.width, settings.height, request.hires_scale)
        if width > MAX_SIDE or height > MAX_SIDE:  # the same bound as an explicit width/height
            raise ValueError(f"hires_scale: {request.hires_scale} makes {width}x{height} images from "
                             f"{settings.width}x{settings.height}; at most {MAX_SIDE} pixels per side are allowed")
        hires_steps = request.hires_steps or settings.steps
        if denoising_steps(hires_steps, hires_strength_of(request)) < 1:
            raise ValueError(f"hires_strength: {hires_strength_of(request)} of {hires_steps} steps leaves no "
                             "denoising step; raise hires_strength or hires_steps")
    if family == "sdxl-refiner" and request.init_image is None:
        raise ValueError(f"model: {request.model!r} is an SDXL refiner (img2img only); give init_image, or use it "
                         "as refiner= of an SDXL base model")
    if request.refiner is not None and family not in REFINER_BASE_FAMILIES:
        raise ValueError(f"refiner: needs an SDXL base model; {request.model!r} is of the {family} family")
    if request.refiner is not None:
        from difflab.engine.registry import resolve_model

        refiner_family = resolve_model(request.refiner).family
        if refiner_family not in REFINER_FAMILIES:
            raise ValueError(f"refiner: {request.refiner!r} is of the {refiner_family} family; it must be an SDXL "
                             "refiner (or SDXL) model")


def check_request_settings(request: "GenerationRequest") -> None:
    """``check_settings`` for a request whose model is not loaded yet (entry points call it before any output)."""
    from difflab.engine.pipeline import Settings
    from difflab.engine.registry import resolve_model

    check_settings(Settings.of(request, resolve_model(request.model, request.allow_unsafe_pickle)))


# ---- metadata ----

def infotext_settings(settings: "Settings") -> dict[str, Any]:
    """A1111 infotext keys for the mode: "Denoising strength" (img2img, or the hires pass as A1111's txt2img writes
    it), "Hires upscale/steps/upscaler", plus difflab's "Init image hash", "Mask hash", "Refiner", "Refiner switch at".
    Short hashes are the first 10 hex digits of the file's SHA-256, like A1111's model hash."""
    from difflab.engine.hires import upscaler_of

    request, values = settings.request, {}
    if (request.clip_skip or 1) > 1:
        values["Clip skip"] = request.clip_skip  # A1111 writes it only when it is not 1
    if request.vae is not None:  # A1111: "VAE hash: <sha256[:10]>, VAE: <file name without .safetensors>"
        from difflab.engine.outputs import weights_hash
        from difflab.engine.vae import resolve_vae

        vae = resolve_vae(request.vae)
        values["VAE hash"], values["VAE"] = weights_hash(vae.weights), vae.name
    from difflab.engine.embeddings import resolve_embeddings, ti_hashes

    embeddings = resolve_embeddings(request)
    if embeddings:  # A1111: TI hashes: "name: <sha256[:12]>, ..."
        values["TI hashes"] = ti_hashes(embeddings)
    if settings.guidance_end < 1:
        values["Guidance end"] = settings.guidance_end  # difflab's key: A1111 has no guidance interval
    if request.init_image is not None:
        values["Denoising strength"] = strength_of(request)
        values["Init image hash"] = file_sha256(request.init_image)[:10]
    if request.mask is not None:
        values["Mask hash"] = file_sha256(request.mask)[:10]
    if request.refiner is not None:
        values["Refiner"] = Path(request.refiner).name if Path(request.refiner).exists() else request.refiner
        values["Refiner switch at"] = refiner_switch_of(request)
    if request.hires_scale is not None:
        key = "Hires denoising strength" if request.init_image is not None else "Denoising strength"
        values[key] = hires_strength_of(request)
        scale = request.hires_scale
        values["Hires upscale"] = int(scale) if float(scale).is_integer() else scale  # A1111 writes "2", not "2.0"
        values["Hires steps"] = request.hires_steps or settings.steps
        values["Hires upscaler"] = upscaler_of(request).name
    return values


def record_settings(settings: "Settings") -> dict[str, Any]:
    """The mode's effective values for the JSON record: files by path and full SHA-256, defaults filled in."""
    request = settings.request
    values: dict[str, Any] = {"mode": mode_of(request)}
    for name in ("init_image", "mask"):
        path = getattr(request, name)
        if path is not None:
            values[name] = {"path": str(Path(path).expanduser().resolve()), "sha256": file_sha256(path)}
    if request.init_image is not None:
        values["strength"] = strength_of(request)
    if request.vae is not None:
        from difflab.engine.vae import resolve_vae
        from difflab.io.hashing import cached_file_sha256  # the infotext's "VAE hash" hashed it already

        vae = resolve_vae(request.vae)
        values["vae"] = {"name": vae.name, "path": str(vae.path.resolve()), "sha256": cached_file_sha256(vae.weights)}
    from difflab.engine import embeddings

    used = embeddings.resolve_embeddings(request)
    if used:  # the request's and the folder's embeddings, by path and full SHA-256
        values["embeddings"] = embeddings.record(used)
    if request.refiner is not None:
        values["refiner"], values["refiner_switch"] = request.refiner, refiner_switch_of(request)
    if request.hires_scale is not None:
        from difflab.engine.hires import upscaler_of

        width, height = hires_size(settings.width, settings.height, request.hires_scale)
        values["hires"] = {"scale": request.hires_scale, "strength": hires_strength_of(request),
                           "steps": request.hires_steps or settings.steps, "upscaler": upscaler_of(request).name,
                           "width": width, "height": height}
    return values


# ---- running ----

def mode_pipeline(pipeline, mode: Mode):
    """The pipeline class for ``mode`` over the same modules (and the same scheduler object) as ``pipeline``."""
    if mode == "txt2img":
        return pipeline
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
    derived = auto.from_pipe(pipeline)
    derived.set_progress_bar_config(disable=True)
    return derived


def _fresh_scheduler(pipeline) -> None:
    """Schedulers keep state between steps: every pass starts from a new one of the same kind and config."""
    pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)


def generate(
    pipeline,
    settings: "Settings",
    kwargs: dict[str, Any],
    cache: "PipelineCache",
    on_step: Optional[Callable[[int, int], None]] = None,
    previews: Optional["Previews"] = None,
    group: Sequence["GenerationRequest"] = (),
) -> list:
    """Run every pass the request asks for; ``kwargs`` are the txt2img keyword arguments (prompt, size, seeds).
    ``on_step(done, total)`` after every denoising step of every pass; ``previews`` (engine.progress) if asked.
    ``group``: the compatible requests of a merged call (engine.merged), whose prompts go in one per image."""
    from difflab.engine.progress import StepProgress

    progress = StepProgress(on_step, total_steps(settings), previews)
    try:
        return _generate(pipeline, settings, kwargs, cache, progress, group)
    finally:
        progress.close()


def _generate(pipeline, settings: "Settings", kwargs: dict[str, Any], cache: "PipelineCache",
              progress: "StepProgress", group: Sequence["GenerationRequest"]) -> list:
    from difflab.engine.guidance_interval import with_guidance_interval
    from difflab.engine.merged import NotMergeable, merged_prompt_arguments
    from difflab.engine.prompt_weighting import prompt_arguments

    request = settings.request
    check_settings(settings)
    mode = mode_of(request)
    if group and (refiner_switch_of(request) is not None or request.hires_scale is not None):
        raise NotMergeable("the refiner and the hires fix run per request")
    # 1. The first pass: txt2img, img2img or inpainting over the cached pipeline's modules.
    first = mode_pipeline(pipeline, mode)
    family = settings.model.family
    prompt = merged_prompt_arguments(first, family, group) if group else prompt_arguments(first, family, request)
    kwargs = with_prompt(kwargs, prompt)
    call = dict(kwargs)
    init = mask = None
    if mode != "txt2img":
        init = _resized(load_image(request.init_image, "init_image"), settings.width, settings.height)
        call["image"], call["strength"] = init, strength_of(request)
        if mode == "inpaint":
            mask = _resized(load_image(request.mask, "mask", mode="L"), settings.width, settings.height)
            mask = mask.point(lambda value: 255 if value >= 128 else 0)  # what the pipeline sees: binarized at 0.5
            call["mask_image"] = mask
        else:  # img2img pipelines take their size from the image
            call.pop("width"), call.pop("height")
    refiner_switch = refiner_switch_of(request)
    if refiner_switch is not None:
        call["denoising_end"], call["output_type"] = refiner_switch, "latent"
    call.update(progress.kwargs(first))
    output = first(**with_guidance_interval(call, settings.guidance_end))
    # 2. SDXL ensemble of experts: the refiner denoises the last (1 - switch) of the noise levels from the latents.
    if refiner_switch is not None:
        images = _refine(output.images, settings, {**kwargs, **progress.kwargs(first)}, cache, refiner_switch)
    else:
        images = output.images
    if mask is not None:
        images = [paste_unmasked(image, init, mask) for image in images]
    # 3. Hires fix: Lanczos upscale of the decoded images, then img2img at the large size.
    if request.hires_scale is not None:
        from difflab.engine.hires import hires_pass

        img2img = mode_pipeline(pipeline, "img2img")
        images = hires_pass(img2img, images, settings, {**kwargs, **progress.kwargs(img2img)})
    return images


def _refine(latents, settings: "Settings", kwargs: dict[str, Any], cache: "PipelineCache", switch: float) -> list:
    from difflab.engine.prompt_weighting import prompt_arguments
    from difflab.engine.registry import resolve_model
    from difflab.engine.schedulers import make_scheduler

    request = settings.request
    model = resolve_model(request.refiner)  # its family was checked by check_settings
    loaded, original_scheduler = cache.get(model)
    from difflab.engine.backends import backend_modules
    from difflab.engine.embeddings import applied_embeddings, resolve_for

    # the prompt's embeddings reach the refiner's own text encoder too (A1111 applies them to every model it runs),
    # then the run's backend draws the refiner's steps
    embeddings = resolve_for([request])
    own = [] if model.path == settings.model.path else embeddings  # a base as its own refiner holds them already
    with applied_embeddings(loaded, model.family, own), \
            backend_modules(loaded, cache.backend, model, embeddings=embeddings):
        refiner = mode_pipeline(loaded, "img2img")  # a base SDXL model used as refiner runs as img2img
        config = dict(original_scheduler.config)
        refiner.scheduler = (make_scheduler(settings.scheduler, config) if settings.scheduler is not None
                             else type(original_scheduler).from_config(config))
        call = with_prompt({key: value for key, value in kwargs.items() if key not in ("width", "height")},
                           prompt_arguments(refiner, model.family, request))  # the refiner has its own text encoder
        # the same per-image generators continue: the latents already carry image i's noise from seed + i
        return refiner(**call, image=latents, denoising_start=switch).images


def paste_unmasked(image: "Image.Image", init: "Image.Image", mask: "Image.Image") -> "Image.Image":
    """The generated pixels where the mask is white, the original pixels elsewhere."""
    from PIL import Image

    return Image.composite(image.convert("RGB"), init.convert("RGB"), mask.convert("L"))


def with_prompt(kwargs: dict[str, Any], prompt: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with its prompt arguments (strings or embeddings) replaced by ``prompt``."""
    from difflab.engine.prompt_weighting import PROMPT_KEYS

    return {**{key: value for key, value in kwargs.items() if key not in PROMPT_KEYS}, **prompt}


def _resized(image: "Image.Image", width: int, height: int) -> "Image.Image":
    from PIL import Image

    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)
