"""GenerationRequest: the one validated description of a generation job.

The CLI, batch files, the HTTP API and replay all build this model, so a bad value gets the same error from
every entry point, naming the field and what it allows, before any model is loaded or any file is written.
Defaults that depend on the model family (size, steps, guidance) are None here and filled in by the engine
from the model's preset.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from difflab.engine.control import ControlSpec, parse_control
from difflab.engine.image_limits import MAX_SIDE
from difflab.engine.schedulers import resolve_sampler

MAX_IMAGES = 64  # per request; a batch file splits bigger jobs into requests
MAX_STEPS = 1000
MAX_SEED = 2**32 - 1  # A1111 and diffusers seeds fit in 32 bits
DEFAULT_STRENGTH = 0.75  # A1111's default denoising strength for img2img and inpainting
DEFAULT_REFINER_SWITCH = 0.8  # the SDXL report's split: the base model denoises the first 80% of the noise levels
DEFAULT_HIRES_STRENGTH = 0.5
MAX_HIRES_SCALE = 4.0
MAX_CLIP_SKIP = 12  # A1111's slider goes to 12, the layer count of SD 1.x's CLIP ViT-L
MAX_CONTROLS = 4  # ControlNets per request; each adds a network pass per step


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    model: str = "tiny-shapes"
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="images; image i uses seed + i")
    steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS)
    guidance: Optional[float] = Field(None, description="classifier-free guidance scale (1 = off)")
    guidance_end: Optional[float] = Field(None, gt=0, le=1, description="fraction of the steps that use the "
                                          "guidance; the rest use the conditional prediction alone (a guidance "
                                          "interval) [default: the model's; 1 = every step]")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    scheduler: Optional[str] = Field(None, description="A1111 sampler name, e.g. 'DPM++ 2M Karras'")
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE)
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE)
    # img2img / inpainting / refiner / hires fix (engine/modes.py, engine/hires.py)
    init_image: Optional[str] = Field(None, description="image to start from (img2img); its size is the default size")
    strength: Optional[float] = Field(None, gt=0, le=1, description="how much of the init image is redrawn "
                                      f"[default {DEFAULT_STRENGTH} with an init image]")
    mask: Optional[str] = Field(None, description="inpainting mask, same size as init_image: white = redraw")
    refiner: Optional[str] = Field(None, description="SDXL refiner model for the last steps (ensemble of experts)")
    refiner_switch: Optional[float] = Field(None, gt=0, lt=1, description="fraction of the steps the base model "
                                            f"runs before the refiner [default {DEFAULT_REFINER_SWITCH}]")
    hires_scale: Optional[float] = Field(None, gt=1, le=MAX_HIRES_SCALE, description="hires fix: upscale factor")
    hires_strength: Optional[float] = Field(None, gt=0, le=1, description="hires fix: img2img strength "
                                            f"[default {DEFAULT_HIRES_STRENGTH}]")
    hires_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="hires fix: steps [default: steps]")
    hires_upscaler: Optional[str] = Field(None, description="hires fix: Lanczos, Nearest, or an ESRGAN-family file "
                                          "(a name in $DIFFLAB_UPSCALER_DIR, or a path) [default: Lanczos]")
    vae: Optional[str] = Field(None, description="another VAE: a diffusers AutoencoderKL folder or .safetensors "
                               "file, or a name in $DIFFLAB_VAE_DIR (A1111's sd_vae); must fit the model's latents")
    clip_skip: Optional[int] = Field(None, ge=1, le=MAX_CLIP_SKIP, description="A1111's 'Clip skip' "
                                     "(CLIP_stop_at_last_layers): 1 = the text encoder's last layer, 2 = the one "
                                     "before it, ... (diffusers' clip_skip is this minus 1); SD 1.x and SDXL")
    long_prompt: Literal["chunk", "truncate"] = Field(
        "chunk", description="prompts over the text encoder's limit: A1111-style 75-token chunks, or truncated")
    # memory and model-file safety (engine/memory.py, engine/single_file.py)
    memory: tuple[str, ...] = Field((), description="memory knobs: attention_slicing, vae_slicing, vae_tiling, "
                                    "model_cpu_offload, sequential_cpu_offload (comma lists accepted)")
    allow_unsafe_pickle: bool = Field(False, description="load .ckpt/.pt/.bin model files (pickles can run code)")
    loras: tuple[str, ...] = Field((), max_length=8, description="LoRAs as NAME_OR_PATH[:WEIGHT], combined "
                                   "with their weights (engine/lora.py)")
    embeddings: tuple[str, ...] = Field((), max_length=16, description="textual inversion embeddings as "
                                        "FILE[:TOKEN] (a .safetensors file, or a name in $DIFFLAB_EMBEDDINGS_DIR); "
                                        "the folder's embeddings also load when their token is in a prompt "
                                        "(engine/embeddings.py)")
    # ControlNet (engine/control.py, control_run.py): several controls = multi-ControlNet, residuals summed
    controls: tuple[ControlSpec, ...] = Field((), max_length=MAX_CONTROLS, description="ControlNets: "
                                              "KIND:IMAGE[:SCALE] strings or {kind, image, scale, model, low, high}")
    control_start: float = Field(0.0, ge=0, lt=1, description="fraction of the steps before the ControlNets act")
    control_end: float = Field(1.0, gt=0, le=1, description="fraction of the steps after which they stop")

    @field_validator("guidance")
    @classmethod
    def _finite_guidance(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError("must be a finite number >= 0")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: Optional[int]) -> Optional[int]:
        # the VAE halves the image 3 times (Stable Diffusion's factor 8): other sizes cannot be encoded/decoded
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, e.g. {value - value % 8 or 8} or {value - value % 8 + 8}")
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _known_memory_knobs(cls, value):
        from difflab.engine.memory import parse_knobs

        return parse_knobs(_listed(value))  # ladder order, no duplicates; names the field when a knob is unknown

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_specs(cls, value):
        from difflab.engine.lora import parse_lora_spec

        return tuple(str(parse_lora_spec(str(item))) for item in _listed(value))  # canonical "name:weight"

    @field_validator("embeddings", mode="before")
    @classmethod
    def _embedding_specs(cls, value):
        from difflab.engine.embeddings import parse_embedding_spec

        items = [value] if isinstance(value, str) else list(value or ())
        return tuple(str(parse_embedding_spec(str(item))) for item in items)

    @field_validator("controls", mode="before")
    @classmethod
    def _control_specs(cls, value):
        items = _listed(value, singles=(str, dict, ControlSpec))
        return tuple(parse_control(item) if isinstance(item, str) else item for item in items)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else resolve_sampler(value).name  # canonical A1111 name

    @field_validator("hires_upscaler")
    @classmethod
    def _known_upscaler(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        from difflab.engine.upscalers.registry import resolve_upscaler

        resolved = resolve_upscaler(value, field="hires_upscaler")  # a missing file is named now, not after pass 1
        return resolved.name if not resolved.is_network else value

    @model_validator(mode="after")
    def _prompt_given(self) -> "GenerationRequest":
        if not self.prompt.strip():
            raise ValueError("prompt: must not be empty")
        return self

    @model_validator(mode="after")
    def _images_consistent(self) -> "GenerationRequest":
        from difflab.engine.modes import check_request_images

        check_request_images(self)  # files exist, decode, and sizes agree: before any model loads
        return self

    @model_validator(mode="after")
    def _controls_consistent(self) -> "GenerationRequest":
        from difflab.engine.control_run import check_request_controls

        check_request_controls(self)  # control images decode, start < end, no img2img/refiner/hires with them
        return self


def _listed(value, singles: tuple[type, ...] = (str,)) -> list:
    """The items of a list field given as one item, a list or None. ValueError for anything else: these run
    before pydantic's type checks, and a TypeError from ``list(True)`` would escape as a traceback (an HTTP 500)."""
    if value is None:
        return []
    if isinstance(value, singles):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"must be a list; got {type(value).__name__}")


class RequestError(ValueError):
    """A request that failed validation; the message names every bad field."""


def build_request(**fields) -> GenerationRequest:
    """Validate ``fields`` into a request, or raise RequestError with one readable line per bad field."""
    try:
        return GenerationRequest(**fields)
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "request"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field"
        problems.append(f"{field}: {message}" if not message.startswith(f"{field}:") else message)
    return "; ".join(problems)
