"""``POST /controlnet/detect``: the preprocessed ControlNet map of an image, as A1111's ControlNet extension
(sd-webui-controlnet) answers it, and the same map for the web UI's "Preview map" button (``control_map``).

Clients (webuiapi's ``controlnet_detect``, Krita's and Photoshop's plug-ins) send
``{"controlnet_module", "controlnet_input_images" (or "controlnet_images"), "controlnet_processor_res",
"controlnet_threshold_a", "controlnet_threshold_b"}`` and get ``{"images": [base64 PNG], "info": "Success"}``.
The maps are engine/control.py's preprocessors, the ones a generation's ``controls`` run: A1111's module names
are mapped onto difflab's kinds (``canny``, ``scribble_xdog`` -> scribble, ``softedge_*`` -> softedge,
``depth_*`` -> depth, ``openpose*`` -> pose, ``none``); thresholds are canny's low/high and scribble's threshold
(-1: the module's default), and ``processor_res`` is the short side the image is resized to first (-1: as sent).
Anything else is a 422 naming the field.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Optional

from fastapi import APIRouter, Body
from fastapi.concurrency import run_in_threadpool

from difflab.serve.catalog import FieldError
from difflab.serve.errors import error_response

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

router = APIRouter(tags=["a1111"])
MAX_DETECT_IMAGES = 8
MAX_PROCESSOR_RES = 2048
# A1111 module name (or its prefix) -> difflab kind; difflab's own kind names are accepted as they are
_MODULE_PREFIXES = (("scribble", "scribble"), ("softedge", "softedge"), ("depth", "depth"), ("openpose", "pose"),
                    ("canny", "canny"), ("none", "none"))
_FIELDS = {"controlnet_module", "controlnet_input_images", "controlnet_images", "controlnet_processor_res",
           "controlnet_threshold_a", "controlnet_threshold_b"}


def kind_of_module(module: Any) -> str:
    """difflab's preprocessor kind for an A1111 ControlNet module name; FieldError naming controlnet_module."""
    from difflab.engine.control import KINDS, canonical_kind

    if not isinstance(module, str):
        raise FieldError("controlnet_module", f"must be a module name; got {type(module).__name__}")
    name = module.strip().lower()
    try:
        return canonical_kind(name)
    except ValueError:
        pass
    for prefix, kind in _MODULE_PREFIXES:
        if name.startswith(prefix):
            return kind
    raise FieldError("controlnet_module", f"must be one of {', '.join(KINDS)} or an A1111 module of those kinds "
                                          f"(scribble_xdog, softedge_pidinet, depth_midas, openpose, ...); "
                                          f"got {module[:60]!r}")


def control_map(kind: str, image: "Image.Image", *, low: Optional[int] = None, high: Optional[int] = None,
                size: Optional[tuple[int, int]] = None) -> "Image.Image":
    """The map a ControlNet of ``kind`` sees for ``image``: resized to ``size`` first when given (as a
    generation does, at its output size), then preprocessed. ValueError naming the field for bad input."""
    from difflab.engine.control import preprocess, resized

    image = image.convert("RGB")
    if size is not None:
        image = resized(image, *size, field="image")
    return preprocess(kind, image, low, high)


@router.post("/controlnet/detect")
async def detect(body: dict[str, Any] = Body(...)):
    try:
        return await run_in_threadpool(_detect, body)
    except FieldError as error:
        return error_response(422, "invalid_request", str(error), [{"field": error.field, "message": error.message}])


def _detect(body: dict[str, Any]) -> dict[str, Any]:
    from difflab.engine.image_limits import decode_bounded
    from difflab.serve.inputs import decode_base64

    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise FieldError(unknown[0], "is not a /controlnet/detect field difflab supports")
    kind = kind_of_module(body.get("controlnet_module", "none"))
    field = "controlnet_input_images" if "controlnet_input_images" in body else "controlnet_images"
    images = body.get(field)
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_DETECT_IMAGES:
        raise FieldError(field, f"must be a list of 1 to {MAX_DETECT_IMAGES} base64 images")
    resolution = _integer(body, "controlnet_processor_res", -1, 64, MAX_PROCESSOR_RES)
    low = _integer(body, "controlnet_threshold_a", -1, 0, 2048)
    high = _integer(body, "controlnet_threshold_b", -1, 0, 2048)
    maps = []
    for index, text in enumerate(images):
        where = f"{field}.{index}"
        try:
            image = decode_bounded(decode_base64(where, text), where, "RGB")
        except ValueError as error:
            raise FieldError(where, str(error).removeprefix(f"{where}: ")) from None
        size = None
        if resolution != -1:  # A1111 scales the short side to processor_res
            scale = resolution / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        try:
            made = control_map(kind, image, low=None if low == -1 else low, high=None if high == -1 else high,
                               size=size)
        except ValueError as error:
            message = str(error)
            name = "controlnet_threshold_a" if message.startswith("low") else "controlnet_module"
            raise FieldError(name, message) from None
        buffer = io.BytesIO()
        made.save(buffer, format="PNG")
        maps.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return {"images": maps, "info": "Success"}


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise FieldError(name, f"must be an integer; got {value!r}")
    value = int(value)
    if value != default and not low <= value <= high:
        raise FieldError(name, f"must be {default} (the default) or between {low} and {high}; got {value}")
    return value
