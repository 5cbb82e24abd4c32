"""Uploaded input images (init images, masks, ControlNet images): decoded, re-encoded as PNG and stored in
``DATA_DIR/inputs`` under a name made of their content hash, the only names a request can then give.

``POST /v1/inputs`` sends raw bytes; A1111's ``/sdapi/v1/img2img`` sends base64 strings inside the JSON body. Both
end here, so an uploaded file is stored the same way whichever API brought it, and a client never chooses a path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from difflab.serve.catalog import FieldError

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.I)  # what browsers' FileReader produces


@dataclass(frozen=True)
class StoredInput:
    name: str  # the file name inside the inputs folder: what init_image / mask / controls[].image take
    width: int
    height: int


def decode_base64(field: str, text: object) -> bytes:
    """The bytes of a base64 string (a ``data:image/...;base64,`` prefix is allowed, as A1111 allows it)."""
    if not isinstance(text, str):
        raise FieldError(field, f"must be a base64 string; got {type(text).__name__}")
    if text.startswith(("http://", "https://")):
        raise FieldError(field, "must be base64 image data; the server does not fetch URLs")
    try:
        return base64.b64decode(_DATA_URL.sub("", text.strip(), count=1), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "is not valid base64") from None


def png_of(field: str, data: bytes, mode: str | None = None) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of an image file's bytes; ``mode`` converts it (e.g. "L") first. FieldError
    naming ``field`` when it is not an image or is larger than width/height may be: the size is read from the
    header before a pixel is decoded (engine.image_limits), so a small file declaring a huge image costs nothing."""
    from difflab.engine.image_limits import decode_bounded

    try:
        image = decode_bounded(data, field, mode)  # decoded fully: a truncated file fails here, not in the worker
    except ValueError as error:
        raise FieldError(field, str(error).removeprefix(f"{field}: ")) from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # re-encoded: what is stored is a plain PNG, whatever was sent
    return buffer.getvalue(), image.width, image.height


def store_png(inputs_dir: Path, png: bytes, width: int, height: int) -> StoredInput:
    """Write ``png`` as ``<sha256 prefix>.png`` (atomically; the same image twice is one file)."""
    from difflab.core.checkpoint import atomic_write_bytes

    name = hashlib.sha256(png).hexdigest()[:32] + ".png"
    path = Path(inputs_dir) / name
    if not path.is_file():
        atomic_write_bytes(path, png)
    return StoredInput(name, width, height)


def store_image(inputs_dir: Path, field: str, data: bytes, mode: str | None = None) -> StoredInput:
    """Decode ``data`` (FieldError naming ``field`` when it is not an image) and store it as a PNG input."""
    return store_png(inputs_dir, *png_of(field, data, mode))
