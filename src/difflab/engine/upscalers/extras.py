"""Upscaling image files, as A1111's "Extras" tab: the input's own metadata kept (its ``parameters``), A1111's
``postprocessing`` text added ("Postprocess upscale by: 2, Postprocess upscaler: NAME"), files never replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

MAX_OUTPUT_SIDE = 16384  # pixels per side of an upscaled image: 16384^2 RGB is 0.8 GB decoded


def check_inputs(images: Sequence[Path], scale: float, out: Path) -> None:
    """Every input an image whose upscaled size fits, and ``out`` a folder that can be written: before any work."""
    if not images:
        raise ValueError("images: give at least one image")
    for path in images:
        width, height = image_size(path, "images")
        if max(width, height) * scale > MAX_OUTPUT_SIDE:
            raise ValueError(f"images: {str(path)!r} is {width}x{height}; x{scale:g} would be over "
                             f"{MAX_OUTPUT_SIDE} pixels a side")
    from difflab.output_files import output_problem  # tries a file: os.access says yes to root everywhere

    problem = output_problem(out, "folder")
    if problem is not None:
        raise ValueError(f"--out {str(out)!r} {problem}")


def image_size(path: Path, field: str) -> tuple[int, int]:
    """(width, height) from the file's header only: a decompression bomb is refused, never decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ValueError(f"{field}: {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Image.DecompressionBombError:
        raise ValueError(f"{field}: {str(path)!r} declares more pixels than PIL will decode "
                         "(a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ValueError(f"{field}: {str(path)!r} is not an image PNG, JPEG or WebP can read") from None


def upscale_files(images: Sequence[Path], upscaler, scale: float, out: Path, *, tile: int = 0,
                  allow_unsafe_pickle: bool = False, on_image: Optional[Callable[[int], None]] = None) -> list[Path]:
    from PIL import Image, PngImagePlugin

    from difflab.engine.upscalers.registry import upscale
    from difflab.io.atomic import write_new_file
    from difflab.viz.grid import png_bytes

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for done, path in enumerate(images, 1):
        with Image.open(path) as source:
            text = dict(getattr(source, "text", {}) or {})
            image = source.convert("RGB")
        width, height = round(image.width * scale), round(image.height * scale)
        result = upscale(image, upscaler, width, height, tile=tile, allow_unsafe_pickle=allow_unsafe_pickle)
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            if isinstance(value, str) and key != "postprocessing":
                info.add_text(key, value)
        info.add_text("postprocessing", f"Postprocess upscale by: {scale:g}, Postprocess upscaler: {upscaler.name}")
        stem = Path(path).stem + "-upscaled"  # NAME-upscaled.png, then NAME-upscaled-1.png, ...: never replaced
        names = (f"{stem}.png" if counter == 0 else f"{stem}-{counter}.png" for counter in range(10_000))
        try:
            written.append(write_new_file(out, png_bytes(result, pnginfo=info), names))
        except FileExistsError:
            raise ValueError(f"--out: {str(out)!r} already holds 10000 files named {stem}-N.png") from None
        if on_image is not None:
            on_image(done)
    return written
