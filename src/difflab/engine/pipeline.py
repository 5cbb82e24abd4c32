"""Load and cache diffusers pipelines, and run a GenerationRequest on one.

Image i of a request is drawn with its own CPU generator seeded ``seed + i`` (diffusers' list-of-generators
rule), for its starting latents and for every noise draw of ancestral schedulers: an image does not depend on the
batch it was drawn in, except through the kernels' own batch-size dependence (measured in the tests).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from difflab.engine import modes
from difflab.engine.backends import Backend
from difflab.engine.device import Placement, choose_placement
from difflab.engine import memory
from difflab.engine.registry import FLOW_MATCHING_FAMILIES, ResolvedModel, check_scheduler_fits, resolve_model
from difflab.engine.request import GenerationRequest
from difflab.engine.schedulers import make_scheduler

if TYPE_CHECKING:  # pragma: no cover
    from difflab.engine.merged import MergedBatch
    from difflab.engine.progress import Previews

FAMILIES_WITH_NEGATIVE_PROMPT = ("sd", "sdxl", "sdxl-refiner", "sd3")


@dataclass(frozen=True)
class Settings:
    """A request with the model's defaults filled in: what actually ran, and what metadata records."""

    request: GenerationRequest
    model: ResolvedModel
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Optional[str]  # A1111 name, or None for the model's own scheduler
    guidance_end: float = 1.0  # fraction of the steps with guidance (engine/guidance_interval.py)

    @classmethod
    def of(cls, request: GenerationRequest, model: ResolvedModel) -> "Settings":
        from difflab.engine.guidance_interval import effective_guidance_end
        from difflab.engine.modes import init_image_size

        init_width, init_height = init_image_size(request) or (None, None)  # img2img: the init image's size
        return cls(
            request, model,
            width=request.width or init_width or model.width, height=request.height or init_height or model.height,
            steps=request.steps or model.steps,
            guidance=model.guidance if request.guidance is None else request.guidance,
            scheduler=request.scheduler or model.scheduler,
            guidance_end=effective_guidance_end(request, model),
        )


@dataclass
class Result:
    settings: Settings
    images: list  # PIL images, image i seeded seed + i
    seeds: list[int]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the engine changed on its own (an OOM retry), for the user
    loras: list = field(default_factory=list)  # engine.lora.ResolvedLora applied to these images, for metadata
    controls: list = field(default_factory=list)  # engine.control_run.PreparedControl that steered them
    batch: Optional["MergedBatch"] = None  # set when drawn in one call with other requests (run_merged)
    backend: Backend = field(default_factory=Backend)  # what ran the modules (engine/backends), for metadata
    compiled: bool = False  # drawn by a torch.compile'd U-Net (engine/compile.py): pixels within 1/255 of eager


@dataclass
class PipelineCache:
    """Loaded pipelines by (model path, device, dtype); a second request for the same model does not reload."""

    placement: Placement = field(default_factory=choose_placement)
    backend: Backend = field(default_factory=Backend)  # torch, or OpenVINO copies of the modules (engine/backends)
    compile: bool = False  # torch.compile each pipeline's U-Net once, when loaded (engine/compile.py, --compile)
    _pipelines: dict[tuple, Any] = field(default_factory=dict)
    _controlnets: dict[tuple, Any] = field(default_factory=dict)
    _vaes: dict[tuple, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, model: ResolvedModel):
        """(pipeline, the scheduler it was saved with): requests swap schedulers, the original stays here."""
        key = (str(model.path), self.placement.device, str(self.placement.dtype))
        with self._lock:
            if key not in self._pipelines:
                pipeline = load_pipeline(model, self.placement)
                if self.compile:
                    from difflab.engine.compile import compile_pipeline

                    compile_pipeline(pipeline)
                self._pipelines[key] = (pipeline, pipeline.scheduler)
            return self._pipelines[key]

    def get_controlnet(self, controlnet):
        """The ControlNet module of an engine.control_models.ResolvedControlNet, loaded once per device/dtype."""
        from difflab.engine.control_models import load_controlnet

        key = (str(controlnet.path), self.placement.device, str(self.placement.dtype))
        with self._lock:
            if key not in self._controlnets:
                self._controlnets[key] = load_controlnet(controlnet, self.placement.device, self.placement.dtype)
            return self._controlnets[key]

    def get_vae(self, vae, model_vae_config: dict):
        """The AutoencoderKL of an engine.vae.ResolvedVae (checked to fit ``model_vae_config``), loaded once per
        file version, device and dtype."""
        from difflab.engine.vae import check_fits, load_vae

        key = (str(vae.path), vae.weights.stat().st_mtime_ns, self.placement.device, str(self.placement.dtype))
        with self._lock:
            if key not in self._vaes:
                self._vaes[key] = load_vae(vae, model_vae_config, self.placement.device, self.placement.dtype)
            module = self._vaes[key]
        check_fits(vae.name, dict(module.config), model_vae_config)  # the same file may meet another model
        return module

    def clear(self) -> None:
        with self._lock:
            self._pipelines.clear()
            self._controlnets.clear()
            self._vaes.clear()


def load_pipeline(model: ResolvedModel, placement: Placement):
    """A diffusers pipeline for the model, in safetensors only (``use_safetensors=True`` refuses pickles)."""
    import diffusers

    if model.single_file:
        from difflab.engine.single_file import load_single_file_pipeline

        # resolve_model already refused pickles the request did not allow
        pipeline = load_single_file_pipeline(model.path, model.family, placement.dtype, allow_unsafe_pickle=True)
    else:
        # diffusers renamed torch_dtype to dtype (and warns on the old name); older diffusers know only torch_dtype
        from diffusers.utils import deprecation_utils

        dtype_name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        pipeline = diffusers.DiffusionPipeline.from_pretrained(
            str(model.path), use_safetensors=True, local_files_only=True, **{dtype_name: placement.dtype}
        )
    pipeline.set_progress_bar_config(disable=True)  # difflab shows its own progress
    return pipeline.to(placement.device)


CONTROL_PIPELINES = {"sd": "StableDiffusionControlNetPipeline", "sdxl": "StableDiffusionXLControlNetPipeline",
                     "flux": "FluxControlNetPipeline"}


def control_pipeline(pipeline, controlnets: list, family: str):
    """The family's ControlNet pipeline over the cached pipeline's modules (no reload, no copy) plus
    ``controlnets`` (several: diffusers wraps them in its Multi-ControlNet, which sums their residuals)."""
    import diffusers

    if family not in CONTROL_PIPELINES:
        raise ValueError(f"controls: ControlNet is supported for the {', '.join(CONTROL_PIPELINES)} families; "
                         f"this model is {family}")
    pipeline_class = getattr(diffusers, CONTROL_PIPELINES[family])
    controlled = pipeline_class.from_pipe(pipeline, controlnet=controlnets[0] if len(controlnets) == 1 else controlnets)
    controlled.set_progress_bar_config(disable=True)
    return controlled


def generators_for(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image: CPU so the same seed gives the same noise on every device."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def pipeline_kwargs(settings: Settings, generators: list[torch.Generator]) -> dict[str, Any]:
    request, family = settings.request, settings.model.family
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
        width=settings.width, height=settings.height, num_images_per_prompt=request.n, generator=generators,
    )
    if family in FAMILIES_WITH_NEGATIVE_PROMPT:
        kwargs["negative_prompt"] = request.negative_prompt or None
    elif request.negative_prompt:
        raise ValueError(f"negative_prompt: the {family} family has no negative prompt (it does not use CFG)")
    return kwargs


def run(
    request: GenerationRequest,
    cache: PipelineCache,
    *,
    on_step: Optional[Callable[[int, int], None]] = None,
    previews: Optional["Previews"] = None,
) -> Result:
    """Generate the request's images. ``on_step(done, total)`` is called after every denoising step; ``previews``
    (engine.progress.Previews) asks for images of the denoised estimate every few steps."""
    return _draw([request], cache, on_step, previews)[0]


def run_merged(
    requests: Sequence[GenerationRequest],
    cache: PipelineCache,
    *,
    on_step: Optional[Callable[[int, int], None]] = None,
    previews: Optional["Previews"] = None,
) -> list[Result]:
    """Generate compatible requests (equal ``merged.merge_key``) in one pipeline call: one Result per request,
    request i's images seeded as alone. ``NotMergeable`` (a ValueError) before any step when they cannot share it.
    ``previews.indices`` are positions in the whole call (``merged.layout``)."""
    from difflab.engine.merged import check_mergeable

    check_mergeable(requests)
    return _draw(list(requests), cache, on_step, previews)


def _draw(requests: list[GenerationRequest], cache: PipelineCache, on_step, previews) -> list[Result]:
    import time

    from difflab.engine import merged

    request, together = requests[0], len(requests) > 1  # requests[1:] differ only in merged.FREE_FIELDS
    model = resolve_model(request.model, request.allow_unsafe_pickle)
    settings = Settings.of(request, model)
    check_scheduler_fits(model, settings.scheduler)  # before any weights load
    modes.check_settings(settings)  # strength vs steps, refiner families: before any weights load
    from difflab.engine.lora import applied_loras, resolve_all

    loras = resolve_all(request.loras)  # a missing LoRA file fails here, before any weights load
    from difflab.engine import control_run

    controls = control_run.prepare_controls(settings)  # ControlNets found, maps made: before any weights load
    from difflab.engine.backends import backend_modules, check_request

    check_request(cache.backend, settings, controls)  # what the backend refuses: before any weights load
    from difflab.engine.vae import applied_vae, resolve_vae

    vae = resolve_vae(request.vae) if request.vae is not None else None  # a missing VAE fails before any load
    from difflab.engine.embeddings import applied_embeddings, check_family, resolve_for

    embeddings = resolve_for(requests)  # files read, pickles refused, tokens checked: before any weights load
    check_family(model.family, embeddings)
    for other in requests[1:]:
        pipeline_kwargs(Settings.of(other, model), [])  # each request's own negative-prompt check
    pipeline, original_scheduler = cache.get(model)
    vae_module = cache.get_vae(vae, dict(pipeline.vae.config)) if vae is not None else None
    # a fresh scheduler from the model's own config on every request: schedulers keep state between steps, and a
    # cached pipeline must never carry one request's sampler into the next
    base_config = dict(original_scheduler.config)
    if settings.scheduler is not None and model.family not in FLOW_MATCHING_FAMILIES:
        pipeline.scheduler = make_scheduler(settings.scheduler, base_config)
    else:
        pipeline.scheduler = type(original_scheduler).from_config(base_config)

    def generators() -> list[torch.Generator]:  # image j of request i: seed_i + j, merged or not
        return [generator for one in requests for generator in generators_for(one.seed, one.n)]

    kwargs = pipeline_kwargs(settings, generators())
    if together:  # one prompt per image (modes.generate fills them in), so one image per prompt
        kwargs["num_images_per_prompt"] = 1
    started = time.perf_counter()
    notes: list[str] = []

    def draw():  # fresh generators on every call: a retry after an out-of-memory error draws the same images
        fresh = {**kwargs, "generator": generators()}
        with torch.inference_mode():
            if controls:  # txt2img steered by ControlNets (control_run.py)
                return control_run.generate(pipeline, settings, fresh, cache, controls, on_step, previews)
            # txt2img, img2img, inpainting, refiner, hires fix; weighted or long prompts as embeddings (modes.py)
            return modes.generate(pipeline, settings, fresh, cache, on_step, previews,
                                  group=requests if together else ())

    # LoRAs are fused for OpenVINO: its modules are converted from the PyTorch weights as they are then
    with applied_loras(pipeline, loras, fuse=not cache.backend.is_torch), applied_vae(pipeline, vae_module), \
            applied_embeddings(pipeline, model.family, embeddings), \
            backend_modules(pipeline, cache.backend, model, loras=loras, vae=vae, embeddings=embeddings):
        # all of it for this request only, even on failure
        images = memory.call_with_oom_retry(draw, pipeline, request.memory, cache.placement.device, notes=notes)
    seconds = time.perf_counter() - started
    places = merged.layout(requests)
    return [Result(Settings.of(one, model) if together else settings,
                   images[place.first_image:place.first_image + one.n], [one.seed + i for i in range(one.n)],
                   seconds, notes=list(notes), loras=loras, controls=controls, batch=place if together else None,
                   backend=cache.backend, compiled=cache.compile)
            for one, place in zip(requests, places)]
