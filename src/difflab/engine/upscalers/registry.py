"""Upscalers by A1111's names: the resamplers ``Lanczos``, ``Nearest`` (and ``None``, which does nothing), and
ESRGAN-family network files found by name in ``$DIFFLAB_UPSCALER_DIR`` (default ``./upscalers``; A1111 keeps them in
``models/ESRGAN``), named by their file stem as A1111 names them, or by path from the command line.

``upscale(image, name, scale)`` gives the image ``scale`` times larger: a network runs (tiled) as many times as its
own factor needs, then a Lanczos resize lands on the exact size, as A1111's ``Upscaler.upscale`` does. Images go
into the network as RGB in [0, 1] (ComfyUI's and Real-ESRGAN's convention).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from difflab.io.paths import looks_like_path, within

RESAMPLERS = ("Lanczos", "Nearest", "None")
UPSCALER_DIR_ENV = "DIFFLAB_UPSCALER_DIR"
DEFAULT_UPSCALER_DIR = Path("upscalers")
FILE_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class ResolvedUpscaler:
    name: str  # what A1111 writes as "Hires upscaler" / "Postprocess upscaler"
    path: Optional[Path] = None  # None for a resampler

    @property
    def is_network(self) -> bool:
        return self.path is not None


def upscaler_dir() -> Path:
    return Path(os.environ.get(UPSCALER_DIR_ENV) or DEFAULT_UPSCALER_DIR)


def upscaler_names(folder: Optional[Path] = None) -> list[str]:
    folder = upscaler_dir() if folder is None else Path(folder)
    files = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in FILE_SUFFIXES) if folder.is_dir() else []
    return [*RESAMPLERS, *files]


def resolve_upscaler(source: str, folder: Optional[Path] = None, *, allow_paths: bool = True,
                     field: str = "upscaler") -> ResolvedUpscaler:
    folder = upscaler_dir() if folder is None else Path(folder)
    for name in RESAMPLERS:
        if source.lower() == name.lower():
            return ResolvedUpscaler(name)
    path = Path(source).expanduser()
    if looks_like_path(source):
        if not allow_paths:
            raise ValueError(f"{field}: give a name ({', '.join(upscaler_names(folder))}), not a path")
        if not path.is_file():
            raise ValueError(f"{field}: {source!r} does not exist")
        return ResolvedUpscaler(path.stem, path)
    if folder.is_dir():
        for candidate in sorted(folder.iterdir()):
            if candidate.stem == source and candidate.suffix.lower() in FILE_SUFFIXES:
                if not within(candidate, folder):
                    raise ValueError(f"{field}: {source!r} resolves outside the upscaler folder {str(folder)!r}")
                return ResolvedUpscaler(candidate.stem, candidate)
    raise ValueError(f"{field} must be one of {', '.join(upscaler_names(folder))} (files in {str(folder)!r}); "
                     f"got {source!r}")


@functools.lru_cache(maxsize=4)
def _network(path: str, mtime_ns: int, allow_unsafe_pickle: bool):
    from difflab.engine.upscalers.loader import load_network

    return load_network(Path(path), allow_unsafe_pickle)


def network_of(upscaler: ResolvedUpscaler, allow_unsafe_pickle: bool = False):
    return _network(str(upscaler.path), upscaler.path.stat().st_mtime_ns, allow_unsafe_pickle)


def network_scale(network) -> int:
    return network.config.scale


def upscale(image, upscaler: ResolvedUpscaler, width: int, height: int, *, tile: int = 0,
            allow_unsafe_pickle: bool = False, on_tile=None):
    """``image`` (PIL) resized to ``width`` x ``height`` by ``upscaler``."""
    from PIL import Image

    image = image.convert("RGB")
    if upscaler.name == "None" or (image.width, image.height) == (width, height):
        return image if (image.width, image.height) == (width, height) else image.resize((width, height), Image.LANCZOS)
    if not upscaler.is_network:
        method = Image.NEAREST if upscaler.name == "Nearest" else Image.LANCZOS
        return image.resize((width, height), method)
    import numpy as np
    import torch

    from difflab.engine.upscalers.tiling import DEFAULT_TILE, tiled

    network = network_of(upscaler, allow_unsafe_pickle)
    scale = network_scale(network)
    current = image
    while current.width < width or current.height < height:  # A1111: run again until the size is reached
        pixels = torch.from_numpy(np.asarray(current, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            result = tiled(network, pixels, scale, tile or DEFAULT_TILE, on_tile=on_tile)
        array = (result[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        current = Image.fromarray(array)
        if scale == 1:
            break
    return current if current.size == (width, height) else current.resize((width, height), Image.LANCZOS)
