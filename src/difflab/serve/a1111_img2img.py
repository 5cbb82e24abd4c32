"""A1111's ``POST /sdapi/v1/img2img``: base64 ``init_images`` (and ``mask`` for inpainting) onto GenerationRequest's
``init_image`` / ``strength`` / ``mask``, through the same queue, worker and response shape as txt2img.

The base64 images are decoded and stored in the server's inputs folder exactly as ``POST /v1/inputs`` stores an
upload (content-hash names, re-encoded PNG), and the request then names those files: a body can never point the
server at a path. Field names and defaults follow A1111's ``StableDiffusionImg2ImgProcessingAPI``
(``denoising_strength`` 0.75). difflab's inpainting redraws the whole picture from the noised original under a hard
(binarized) mask and pastes the original pixels back outside it: A1111's ``inpainting_fill=1`` ("original"),
``inpaint_full_res=false`` ("whole picture") and ``mask_blur=0``. Other values of those fields would change the
picture in ways difflab does not implement, so they are refused with 422 (as txt2img refuses ``restore_faces``);
left out, difflab's behaviour applies. ``inpainting_mask_invert=1`` is supported (the mask is inverted on upload).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from difflab.serve.a1111 import Txt2ImgRequest, a1111_error, a1111_response, run_job, to_generation_body
from difflab.serve.app import ServerState, server_of
from difflab.serve.catalog import FieldError
from difflab.serve.idempotency import DESCRIPTION as IDEMPOTENCY_KEY_DESCRIPTION
from difflab.serve.idempotency import HEADER as IDEMPOTENCY_HEADER
from difflab.serve.idempotency import idempotency_key
from difflab.serve.retention import discard_refused_uploads

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
DEFAULT_DENOISING_STRENGTH = 0.75  # A1111's, and GenerationRequest's DEFAULT_STRENGTH

# A1111 img2img fields difflab implements only at one value: field -> (accepted values, what to say)
REFUSED_UNLESS = {"resize_mode": ((None, 0), "difflab resizes the init image to width x height (A1111's 0, "
                                             "'Just resize'); send 0 or leave it out"),
                  "initial_noise_multiplier": ((None, 1, 1.0), "send 1 or leave it out")}
# the same, checked only when a mask is given (A1111 ignores them without one)
REFUSED_WITH_MASK_UNLESS = {
    "mask_blur": ((None, 0), "difflab does not blur masks (it binarizes them at 50%); send 0 or leave it out"),
    "mask_blur_x": ((None, 0), "difflab does not blur masks; send 0 or leave it out"),
    "mask_blur_y": ((None, 0), "difflab does not blur masks; send 0 or leave it out"),
    "inpainting_fill": ((None, 1), "difflab starts the masked area from the noised original (A1111's 1, "
                                   "'original'); send 1 or leave it out"),
    "inpaint_full_res": ((None, False, 0), "difflab inpaints the whole picture (A1111's false); send false or "
                                           "leave it out"),
}


class Img2ImgRequest(Txt2ImgRequest):
    """txt2img's fields plus A1111's img2img ones; unknown A1111 fields are allowed when at their defaults."""

    init_images: list[Any] = Field(..., min_length=1, description="base64 images; difflab takes exactly one")
    denoising_strength: float = DEFAULT_DENOISING_STRENGTH
    mask: Optional[str] = Field(None, description="base64 inpainting mask, the init image's size: white = redraw")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: black = redraw")
    include_init_images: bool = False  # A1111 leaves init_images and mask out of "parameters" unless true


def check_supported(body: Img2ImgRequest) -> None:
    extra = body.model_extra or {}
    rules = {**REFUSED_UNLESS, **(REFUSED_WITH_MASK_UNLESS if body.mask is not None else {})}
    for name, (accepted, advice) in rules.items():
        if name in extra and extra[name] not in accepted:
            raise FieldError(name, f"{extra[name]!r} is not supported: {advice}")
    if len(body.init_images) > 1:
        raise FieldError("init_images", f"difflab takes one init image; got {len(body.init_images)}")


def store_images(server: ServerState, body: Img2ImgRequest, stored: list[str]) -> dict[str, Any]:
    """Decode and store the init image (and mask); the GenerationRequest fields that name them. Each stored file's
    name is appended to ``stored`` as soon as it is written (a refused request removes them)."""
    from difflab.serve.inputs import decode_base64, png_of, store_image, store_png

    inputs = server.catalog.inputs_dir
    init = store_image(inputs, "init_images.0", decode_base64("init_images.0", body.init_images[0]))
    stored.append(init.name)
    fields = {"init_image": init.name, "strength": body.denoising_strength}
    if body.mask is not None:
        png, width, height = png_of("mask", decode_base64("mask", body.mask), mode="L")
        if body.inpainting_mask_invert:
            png = _inverted(png)
        fields["mask"] = store_png(inputs, png, width, height).name
        stored.append(fields["mask"])
    return fields


def _inverted(png: bytes) -> bytes:
    import io

    from PIL import Image, ImageOps

    buffer = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(png))).save(buffer, format="PNG")
    return buffer.getvalue()


@router.post("/img2img")
async def img2img(request: Request, body: Img2ImgRequest,
                  key: Optional[str] = Header(None, alias=IDEMPOTENCY_HEADER, description=IDEMPOTENCY_KEY_DESCRIPTION)):
    """A1111's img2img (and inpainting with ``mask``): ``{"images", "parameters", "info"}`` like txt2img."""
    server = server_of(request)
    started, stored = time.time(), []
    try:
        idempotency = idempotency_key(key, "/sdapi/v1/img2img", body.model_dump(mode="json"))
        check_supported(body)
        generation_body = to_generation_body(server, body)
        generation_body.update(await run_in_threadpool(store_images, server, body, stored))
    except Exception as error:
        if stored:  # a refused request leaves no file behind (serve.retention)
            await run_in_threadpool(discard_refused_uploads, server.store, server.catalog.inputs_dir, stored, started)
        if isinstance(error, FieldError):  # already in A1111's terms
            return a1111_error(error, rename=False)
        raise
    job, failure = await run_job(server, generation_body, idempotency)
    if failure is not None:
        await run_in_threadpool(discard_refused_uploads, server.store, server.catalog.inputs_dir, stored, started)
        return failure
    parameters = body.model_dump()
    if not body.include_init_images:  # A1111 drops the (large) images from the echo
        parameters.pop("init_images"), parameters.pop("mask")
    return await run_in_threadpool(a1111_response, server, job, body, parameters)
