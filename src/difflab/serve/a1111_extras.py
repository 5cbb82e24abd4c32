"""The rest of A1111's ``/sdapi/v1`` that clients call (webuiapi, Krita's and Photoshop's plug-ins, bots): catalogs,
PNG Info, skip, refreshes and memory, with the JSON shapes of A1111's ``modules/api/api.py`` (and its built-in
Lora extension for ``/loras``).

difflab scans its model and LoRA folders on every request, so the refresh endpoints have nothing to do and answer
``null`` as A1111 does. ``/sd-vae`` lists the VAEs in the engine's VAE folder (``$DIFFLAB_VAE_DIR``, names a
request's ``vae`` takes) and ``/upscalers`` the resamplers and the ESRGAN-family files in ``$DIFFLAB_UPSCALER_DIR``
(names ``hires_upscaler`` takes); schedules are part of difflab's sampler names, so ``/schedulers`` lists the
two that txt2img's ``scheduler`` field accepts (Automatic, Karras).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool

from difflab.serve.app import ServerState, server_of
from difflab.serve.catalog import FieldError
from difflab.serve.errors import error_response

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])

# A1111 lists "None" (keep the image as it is) and its built-in Lanczos; difflab's hires fix upscales with Lanczos
# name, label, default_rho: the schedules txt2img/img2img's "scheduler" accepts (a1111.to_generation_body)
SCHEDULERS = (("automatic", "Automatic", -1), ("karras", "Karras", 7.0))


@router.get("/loras")
async def loras(request: Request) -> list[dict[str, Any]]:
    """The server's LoRA folder as A1111's Lora extension lists it: ``name`` is what ``<lora:name:w>`` takes."""
    return await run_in_threadpool(_loras, server_of(request))


def _loras(server: ServerState) -> list[dict[str, Any]]:
    return [{"name": name, "alias": name, "path": str(path), "metadata": _safetensors_metadata(path)}
            for name, path in server.catalog.loras().items()]


def _safetensors_metadata(path) -> dict[str, Any]:
    """The file's ``__metadata__`` (kohya's ss_* training notes), which A1111 returns; {} for folders or none."""
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # an unreadable file is reported when a request uses it, not in the list
        return {}


@router.post("/refresh-loras")
async def refresh_loras() -> None:
    """Nothing to refresh: the LoRA folder is read on every request."""
    return None


@router.post("/refresh-checkpoints")
async def refresh_checkpoints() -> None:
    """Nothing to refresh: the models folder is read on every request."""
    return None


@router.get("/upscalers")
async def upscalers() -> list[dict[str, Any]]:
    from difflab.engine.upscalers.registry import RESAMPLERS, upscaler_names

    # A1111 lists "None" first; model_path stays None: no answer shows a server path
    names = ["None", *(n for n in upscaler_names() if n != "None")]
    return [{"name": name, "model_name": None if name in RESAMPLERS else name, "model_path": None, "model_url": None,
             "scale": 4} for name in names]


@router.get("/sd-vae")
async def sd_vae() -> list[dict[str, Any]]:
    """The VAEs a request's ``vae`` can name (A1111's ``model_name`` / ``filename``; no server paths)."""
    from difflab.engine.vae import vae_names

    return [{"model_name": name, "filename": name} for name in vae_names()]


@router.get("/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": rho, "need_inner_model": False}
            for name, label, rho in SCHEDULERS]


@router.post("/skip")
async def skip(request: Request) -> None:
    """A1111 skips the image being drawn and goes on with the next batch; difflab draws a job's images in one
    batch, so skipping ends the running job at its next step, as ``/interrupt`` does."""
    server = server_of(request)
    current = server.worker.current
    if current is not None:
        server.store.cancel(current.id)
    return None


@router.post("/png-info")
async def png_info(body: dict[str, Any] = Body(...)):
    """``{"image": base64}`` -> ``{"info": parameters text, "items": other text chunks, "parameters": parsed}``,
    as A1111's PNG Info reads ours and A1111's PNGs alike."""
    try:
        return await run_in_threadpool(read_png_info, body.get("image"))
    except FieldError as error:
        return error_response(422, "invalid_request", str(error), [{"field": error.field, "message": error.message}])


def read_png_info(image: Any) -> dict[str, Any]:
    import io

    from PIL import Image, UnidentifiedImageError

    from difflab.engine.metadata import PARAMETERS_KEY
    from difflab.serve.inputs import decode_base64

    if image is None:
        raise FieldError("image", "is required: the PNG as base64")
    data = decode_base64("image", image)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            text = {str(key): value for key, value in opened.info.items() if isinstance(value, str)}
    except (UnidentifiedImageError, OSError):
        raise FieldError("image", "is not an image PNG, JPEG or WebP can read") from None
    info = text.pop(PARAMETERS_KEY, "") or ""
    return {"info": info, "items": text, "parameters": parse_generation_parameters(info)}


def parse_generation_parameters(text: str) -> dict[str, Any]:
    """A1111's ``parse_generation_parameters`` keys: "Prompt", "Negative prompt", each setting as written, and
    "Size" split into "Size-1" (width) and "Size-2" (height)."""
    import re

    from difflab.engine.metadata import parse_parameters

    if not text:
        return {}
    prompt, negative, settings = parse_parameters(text)
    result: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in settings.items():
        size = re.fullmatch(r"(\d+)x(\d+)", value) if isinstance(value, str) else None
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


@router.get("/memory")
async def memory():
    """``{"ram": {free, used, total}, "cuda": {...}}`` in bytes, A1111's shape: ``used`` is this process's RSS,
    and either part is ``{"error": ...}`` where it cannot be measured."""
    return await run_in_threadpool(_memory)


def _memory() -> dict[str, Any]:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        rss, total = process.memory_info().rss, psutil.virtual_memory().total
        ram: dict[str, Any] = {"free": total - rss, "used": rss, "total": total}
    except Exception as error:  # psutil missing or unsupported platform: A1111 reports the error the same way
        ram = {"error": str(error)}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()

            def pair(name: str) -> dict[str, int]:
                return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

            cuda: dict[str, Any] = {
                "system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
        else:
            cuda = {"error": "unavailable"}
    except Exception as error:
        cuda = {"error": str(error)}
    return {"ram": ram, "cuda": cuda}
