"""Size limits for every image a user hands in (init images, masks, control images, server uploads).

An explicit ``width``/``height`` is capped at ``MAX_SIDE``; an input image sets the output size too, so it gets
the same cap. The cap is checked on the size in the file's header, before a single pixel is decoded: a 15 kB
1-bit PNG can declare 11000x11000 pixels (121 MB decoded, 363 MB as RGB), and a 48 kB one 20000x20000, which PIL
itself refuses as a "decompression bomb" with an exception of its own (neither OSError nor ValueError) that would
otherwise escape as a traceback or an HTTP 500.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

MAX_SIDE = 4096  # pixels per side, for width/height and for input images alike (GenerationRequest's bound)
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # the largest image the side limit allows
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")  # PIL's bomb message: "Image size (400000000 pixels) exceeds ..."

Source = Union[str, Path, bytes, BinaryIO]


def check_size(field: str, width: int, height: int, label: str = "the image") -> None:
    """ValueError naming ``field`` when an image of ``width`` x ``height`` is over the limits."""
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"{field}: {label} is {width}x{height} pixels; at most {MAX_SIDE} pixels per side are "
                         f"allowed (the limit of width and height)")


def open_bounded(source: Source, field: str, label: str = "the image") -> "Image.Image":
    """The image in ``source`` (a path, bytes or a binary file), opened but not yet decoded, its size checked.

    ValueError naming ``field`` (and calling the image ``label``) when it is not an image PIL can read or is
    larger than ``MAX_SIDE`` on a side. The caller decodes it (``.load()``, ``.convert()``) and closes it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 M pixels on: far past MAX_SIDE, so the image is refused below anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)  # reads the header only
    except Image.DecompressionBombError as error:
        pixels = _PIL_PIXELS.search(str(error))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "over PIL's decompression-bomb limit"
        raise ValueError(f"{field}: {label} is {size}; at most {MAX_SIDE}x{MAX_SIDE} "
                         f"({MAX_PIXELS:,} pixels) are allowed") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{field}: {label} is not a readable image ({_reason(error)})") from None
    try:
        check_size(field, image.width, image.height, label)
    except ValueError:
        image.close()
        raise
    return image


def decode_bounded(source: Source, field: str, mode: str | None = None, label: str = "the image") -> "Image.Image":
    """The fully decoded image in ``source`` (converted to ``mode`` if given), after ``open_bounded``'s checks.
    A truncated or corrupt file fails here, naming ``field``, not halfway through a generation."""
    image = open_bounded(source, field, label)
    try:
        with image:
            image.load()
            return image.convert(mode) if mode is not None else image.copy()
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError for some broken headers
        raise ValueError(f"{field}: {label} is not a readable image ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    """PIL's reason without the file's path (the server must not echo its own paths)."""
    text = str(error)
    return "not a known image format" if "cannot identify image file" in text else text.split(":")[0][:200]
