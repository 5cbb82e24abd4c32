"""AUTOMATIC1111-compatible endpoints (``/sdapi/v1``), so existing A1111 clients and scripts work unchanged.

An A1111 body is translated into a GenerationRequest and goes through the same queue and worker as ``/v1``, so
the images are the same pixels and carry the same metadata. Field names and defaults follow A1111's
``modules/api/models.py``; the ``info`` string follows ``Processed.js()`` in ``modules/processing.py``, and a
seed of -1 draws a random seed the way ``get_fixed_seed`` does, recorded in ``info`` and in the PNG. Two
deliberate differences: omitted ``steps``/``cfg_scale``/``width``/``height`` take the model's defaults (A1111's
50 steps and 512x512 would be wrong for most models), and a field that would change the image in a way difflab
cannot reproduce (``restore_faces``, ``tiling``, variation seeds, ``override_settings`` other than the checkpoint,
``sd_vae`` and ``CLIP_stop_at_last_layers``, unknown fields) is refused with 422 naming it instead of ignored
(``a1111_fields``). The hires fix (``enable_hr`` and its ``hr_*`` fields) maps onto the engine's hires fix
(``a1111_hires``).
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import re
from typing import Any, Optional

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from difflab.engine.request import MAX_IMAGES
from difflab.serve.a1111_fields import DEFAULT_SETTINGS, HONOURED_SETTINGS, OWN_VAE, check_eta, check_fields, \
    check_override_settings, check_setting
from difflab.serve.a1111_hires import hires_request_fields, pop_hires_fields
from difflab.serve.app import ServerState, server_of
from difflab.serve.catalog import FieldError
from difflab.serve.errors import error_response, field_errors
from difflab.serve.idempotency import DESCRIPTION as IDEMPOTENCY_KEY_DESCRIPTION
from difflab.serve.idempotency import HEADER as IDEMPOTENCY_HEADER
from difflab.serve.idempotency import IdempotencyKey, idempotency_key
from difflab.serve.routes import failed_job_response, submit, wait_until_finished

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
_CHECKPOINT_TITLE = re.compile(r"^(.*?)(?: \[[0-9a-f]{8,64}\])?$")  # "name [hash]" as A1111 titles checkpoints
# infotext keys A1111 reports in info's extra_generation_params
_EXTRA_PARAMETERS = ("Hires upscale", "Hires steps", "Hires upscaler", "Clip skip", "VAE", "VAE hash")
# GenerationRequest field -> the A1111 field a client sent, for error messages in the client's own terms
A1111_NAMES = {"guidance": "cfg_scale", "scheduler": "sampler_name", "n": "batch_size",
               "model": "override_settings.sd_model_checkpoint", "strength": "denoising_strength",
               "init_image": "init_images.0", "vae": "override_settings.sd_vae",
               "clip_skip": "override_settings.CLIP_stop_at_last_layers", "hires_scale": "hr_scale",
               "hires_strength": "denoising_strength", "hires_steps": "hr_second_pass_steps",
               "hires_upscaler": "hr_upscaler"}


class Txt2ImgRequest(BaseModel):
    """The A1111 fields difflab maps; every other field a body carries is kept (extra="allow") for
    ``a1111_fields.check_fields``, which accepts it only where it cannot change the picture."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    seed: int = -1
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = None  # A1111's older name for the sampler
    scheduler: Optional[str] = None  # A1111 >= 1.9 splits "DPM++ 2M Karras" into sampler + "Karras"
    width: Optional[int] = None
    height: Optional[int] = None
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


def to_generation_body(server: ServerState, body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111 fields -> a GenerationRequest body (not yet validated); FieldError for unsupported settings."""
    img2img = hasattr(body, "init_images")
    extra = dict(body.model_extra or {})
    eta = extra.pop("eta", None)
    hires = pop_hires_fields(extra)
    check_fields(extra, img2img=img2img)
    settings = {**DEFAULT_SETTINGS, **server.a1111_options, **check_override_settings(body.override_settings)}
    n = body.batch_size * body.n_iter  # A1111 draws image i of the whole job with seed + i, as difflab does
    if n > MAX_IMAGES:  # before the seed is drawn: randrange(2**32 - n) needs a small n
        raise FieldError("batch_size", f"batch_size x n_iter must be at most {MAX_IMAGES}; got "
                                       f"{body.batch_size} x {body.n_iter}")
    sampler = body.sampler_name or body.sampler_index
    if body.scheduler not in (None, "", "Automatic", "automatic"):
        if body.scheduler.lower() != "karras":
            raise FieldError("scheduler", f"must be 'Automatic' or 'Karras' (difflab's sampler names carry the "
                                          f"schedule, e.g. 'DPM++ 2M Karras'); got {body.scheduler!r}")
        if sampler and not sampler.lower().endswith("karras"):
            sampler = f"{sampler} Karras"
    check_eta(eta, sampler)
    model = checkpoint_name(settings["sd_model_checkpoint"])
    result = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "model": model, "n": n,
              "steps": body.steps, "guidance": body.cfg_scale, "scheduler": sampler,
              "width": body.width, "height": body.height}
    if settings["sd_vae"] not in OWN_VAE:
        result["vae"] = settings["sd_vae"]
    if settings["CLIP_stop_at_last_layers"] != 1:  # 1, the last layer, is what difflab does without clip_skip
        result["clip_skip"] = settings["CLIP_stop_at_last_layers"]
    if img2img:
        if hires.get("enable_hr") not in (None, False):
            raise FieldError("enable_hr", "A1111's img2img has no hires fix; send false or leave it out")
    elif hires.get("enable_hr") not in (None, False):
        defaults = model_defaults(server, model)
        width, height = body.width or defaults.get("width"), body.height or defaults.get("height")
        if width is None or height is None:  # an unknown model: its own field reports it
            raise FieldError("override_settings.sd_model_checkpoint", f"no model {model!r} on this server")
        result.update(hires_request_fields(
            hires, prompt=body.prompt, negative_prompt=body.negative_prompt, sampler=sampler, width=width,
            height=height, steps=lambda: body.steps or defaults.get("steps")))
    # last: the seed is drawn only for a body that is otherwise fine
    result["seed"] = body.seed if body.seed != -1 else random.SystemRandom().randrange(2**32 - n)
    return result


def model_defaults(server: ServerState, model: str) -> dict[str, int]:
    """The model's default width, height and steps ({} when the name is not one of the server's models)."""
    from difflab.engine.registry import resolve_model

    try:
        resolved = resolve_model(server.catalog.model_path("model", model))
    except ValueError:
        return {}
    return {"width": resolved.width, "height": resolved.height, "steps": resolved.steps}


def checkpoint_name(title: str) -> str:
    return _CHECKPOINT_TITLE.match(title).group(1)


def a1111_error(error: Exception, rename: bool = True) -> JSONResponse:
    """A validation error, with GenerationRequest's field names turned into A1111's when ``rename``."""
    if isinstance(error, FieldError):
        fields = [{"field": error.field, "message": error.message}]
    else:
        fields = field_errors(error.errors())
    for item in fields if rename else ():
        item["field"] = A1111_NAMES.get(item["field"], item["field"])
    return error_response(422, "invalid_request", "; ".join(f"{f['field']}: {f['message']}" for f in fields), fields)


@router.post("/txt2img")
async def txt2img(request: Request, body: Txt2ImgRequest,
                  key: Optional[str] = Header(None, alias=IDEMPOTENCY_HEADER, description=IDEMPOTENCY_KEY_DESCRIPTION)):
    """A1111's txt2img: ``{"images": [base64 PNG], "parameters": {...}, "info": "<JSON string>"}``."""
    server = server_of(request)
    try:
        idempotency = idempotency_key(key, "/sdapi/v1/txt2img", body.model_dump(mode="json"))
        generation_body = to_generation_body(server, body)
    except FieldError as error:  # already in A1111's terms
        return a1111_error(error, rename=False)
    job, failure = await run_job(server, generation_body, idempotency)
    if failure is not None:
        return failure
    return await run_in_threadpool(a1111_response, server, job, body, body.model_dump())


async def run_job(server: ServerState, generation_body: dict[str, Any],
                  idempotency: Optional[IdempotencyKey] = None) -> tuple[Any, Optional[JSONResponse]]:
    """Queue an A1111 request's job and wait for it: ``(job, None)`` when done, else ``(None, the error response)``."""
    try:
        job = await submit(server, generation_body, "a1111", idempotency)
    except (FieldError, ValidationError) as error:  # in GenerationRequest's terms
        return None, a1111_error(error)
    job = await wait_until_finished(server, job)
    if job.state != "done":
        return None, failed_job_response(server, job)
    return job, None


def a1111_response(server: ServerState, job, body: Txt2ImgRequest, parameters: dict[str, Any]) -> dict[str, Any]:
    """``{"images", "parameters", "info"}`` of a finished job, as A1111's txt2img and img2img answer."""
    from difflab.engine.metadata import parse_parameters, read_png_metadata

    paths = [server.config.images_dir / image["file"] for image in job.images]
    infotexts, records = zip(*(read_png_metadata(path) for path in paths))
    _, _, first = parse_parameters(infotexts[0])
    request, settings = job.request, records[0]["settings"]
    n = len(paths)
    info = {  # the keys and order of A1111's Processed.js()
        "prompt": request["prompt"], "all_prompts": [request["prompt"]] * n,
        "negative_prompt": request["negative_prompt"], "all_negative_prompts": [request["negative_prompt"]] * n,
        "seed": request["seed"], "all_seeds": [image["seed"] for image in job.images],
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0,
        "width": settings["width"], "height": settings["height"], "sampler_name": first.get("Sampler"),
        "cfg_scale": settings["guidance"], "steps": settings["steps"], "batch_size": body.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": first.get("Model"), "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": first.get("VAE"), "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.get("strength") or request.get("hires_strength"),
        "extra_generation_params": {key: first[key] for key in _EXTRA_PARAMETERS if key in first},
        "index_of_first_image": 0, "infotexts": list(infotexts), "styles": [],
        "job_timestamp": datetime.datetime.fromtimestamp(job.started).strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.get("clip_skip") or 1, "is_using_inpainting_conditioning": False,
        "version": first.get("Version"),
    }
    images = [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths] if body.send_images else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


@router.get("/sd-models")
async def sd_models(request: Request):
    """The models available on this machine, as A1111 lists checkpoints."""
    return await run_in_threadpool(_sd_models, server_of(request))


def _sd_models(server: ServerState) -> list[dict[str, Any]]:
    from difflab.engine.outputs import model_hash
    from difflab.engine.registry import resolve_model
    from difflab.serve.routes import model_entries

    items = []
    for entry in model_entries(server):
        if not entry["available"]:
            continue
        model = resolve_model(server.catalog.model_path("model", entry["name"]))
        hash_ = model_hash(model.path) or None
        # filename: A1111 gives the checkpoint's path; difflab gives the name a request uses, never a server path
        items.append({"title": f"{entry['name']} [{hash_}]" if hash_ else entry["name"], "model_name": entry["name"],
                      "hash": hash_, "sha256": None, "filename": entry["name"], "config": None})
    return items


@router.get("/samplers")
async def samplers():
    from difflab.engine.schedulers import SAMPLER_SPECS

    return [{"name": spec.name, "aliases": list(spec.aliases), "options": {k: str(v) for k, v in spec.options.items()}}
            for spec in SAMPLER_SPECS]


@router.get("/options")
async def get_options(request: Request):
    return {**DEFAULT_SETTINGS, **server_of(request).a1111_options, "samples_format": "png"}


@router.post("/options")
async def set_options(request: Request, options: dict[str, Any]):
    """``sd_model_checkpoint`` (the model later requests use), ``sd_vae`` and ``CLIP_stop_at_last_layers`` are
    settable, for every later request until changed (``override_settings`` still wins for its own request);
    other A1111 options are refused by name. All or nothing: one bad option changes none."""
    server = server_of(request)
    unknown = sorted(set(options) - set(HONOURED_SETTINGS))
    if unknown:
        return error_response(422, "invalid_request", f"{unknown[0]}: is not an option difflab supports",
                              [{"field": name, "message": "is not an option difflab supports"} for name in unknown])
    checked = {}
    try:
        for name, value in options.items():
            checked[name] = check_setting(name, name, value)
        if "sd_model_checkpoint" in checked:
            checked["sd_model_checkpoint"] = checkpoint_name(checked["sd_model_checkpoint"])
            server.catalog.model_path("sd_model_checkpoint", checked["sd_model_checkpoint"])
    except FieldError as error:
        return a1111_error(error, rename=False)
    server.a1111_options.update(checked)
    return None


@router.get("/progress")
async def progress(request: Request):
    """The running job's progress, in A1111's ProgressResponse shape."""
    import time

    server = server_of(request)
    current = server.worker.current
    job = server.store.get(current.id) if current is not None else None
    counts = server.store.counts()
    fraction = job.step / job.steps if job is not None and job.steps else 0.0
    elapsed = time.time() - job.started if job is not None and job.started else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {
        "progress": round(fraction, 4), "eta_relative": round(eta, 3),
        "state": {"skipped": False, "interrupted": bool(job and job.cancel_requested), "stopping_generation": False,
                  "job": job.id if job else "", "job_count": counts["queued"] + counts["running"],
                  "job_timestamp": (datetime.datetime.fromtimestamp(job.started).strftime("%Y%m%d%H%M%S")
                                    if job and job.started else "0"),
                  "job_no": 0, "sampling_step": job.step if job else 0, "sampling_steps": job.steps if job else 0},
        # the latest step preview (base64 PNG) when the server makes them (--preview-every), as A1111's live preview
        "current_image": preview.png_base64 if (preview := job and server.worker.previews.latest(job.id)) else None,
        "textinfo": None,
    }


@router.post("/interrupt")
async def interrupt(request: Request):
    """Stop the running job at its next step (A1111's Interrupt button)."""
    server = server_of(request)
    current = server.worker.current
    if current is not None:
        server.store.cancel(current.id)
    return None
