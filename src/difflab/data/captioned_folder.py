"""A folder of images with captions, as kohya's scripts and diffusers' LoRA examples read it.

Every image ``x.png`` may have a caption file ``x.txt`` beside it; an image without one gets the caption
template (default ``"{trigger}"``) with the trigger word filled in. :func:`write_shape_set` makes such a folder
from the procedural shapes world, e.g. 20 hexagons for teaching the held-out shape with a LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from difflab.data.image_folder import IMAGE_SUFFIXES

CAPTION_SUFFIX = ".txt"
MASKS_DIR = "masks"  # write_shape_set's masks of the shape (for LoRA training's --masks)


@dataclass(frozen=True)
class CaptionedImages:
    pixels: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    captions: tuple[str, ...]  # caption i describes image i
    paths: tuple[Path, ...]


def load_captioned_folder(root: str | Path, resolution: int, trigger: str = "",
                          template: str = "{trigger}") -> CaptionedImages:
    """Every image directly in ``root`` (sorted by name), resized and centre-cropped to ``resolution``."""
    from difflab.data.image_folder import _square

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder")
    if "{trigger}" not in template:
        raise ValueError(f"caption template must contain {{trigger}}; got {template!r}")
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"data folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, captions = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(_square(image.convert("RGB"), resolution))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
        text_path = path.with_suffix(CAPTION_SUFFIX)
        text = text_path.read_text(encoding="utf-8").strip() if text_path.is_file() else ""
        captions.append(" ".join(text.split()) or template.format(trigger=trigger).strip())
    pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
    return CaptionedImages(pixels, tuple(captions), tuple(paths))


def load_masks(image_paths: Sequence[Path], mask_dir: str | Path, resolution: int) -> torch.Tensor:
    """(N, 1, H, W) masks in [0, 1] for the images at ``image_paths``: ``mask_dir/<image stem>.<any image suffix>``,
    greyscale, white = the subject (kohya's masked-loss convention), resized and cropped as the images are."""
    from difflab.data.image_folder import _square

    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise ValueError(f"masks folder {str(mask_dir)!r} does not exist or is not a folder")
    masks = []
    for path in image_paths:
        found = next((mask_dir / (path.stem + suffix) for suffix in IMAGE_SUFFIXES
                      if (mask_dir / (path.stem + suffix)).is_file()), None)
        if found is None:
            raise ValueError(f"masks: no mask for image {path.name!r} in {str(mask_dir)!r} (want {path.stem}.png)")
        try:
            with Image.open(found) as mask:
                masks.append(_square(mask.convert("L"), resolution))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read mask {str(found)!r}: {error}") from None
    return torch.from_numpy(np.stack(masks).astype(np.float32) / 255)[:, None].contiguous()


def write_shape_set(folder: str | Path, shape: str = "hexagon", n: int = 20, seed: int = 0,
                    resolution: int = 64, trigger: str | None = None) -> list[Path]:
    """``n`` renders of ``shape`` (random colour, background, position, size) as ``0000.png`` + ``0000.txt``,
    and the shape's mask as ``masks/0000.png`` (white on black).

    Captions are full shapes-world captions ("a small red hexagon on the left, blue background"); with
    ``trigger`` given and different from the shape word, it is put in front ("sks, a small red hexagon ...").
    """
    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.data.shapes import SHAPES, caption, random_spec, render
    from difflab.viz.grid import png_bytes

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {list(SHAPES)}; got {shape!r}")
    if not 1 <= n <= 10_000:
        raise ValueError(f"n must be between 1 and 10000; got {n}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    written = []
    for index in range(n):
        spec = random_spec(rng, (shape,))
        text = caption(spec, rng)
        if trigger and trigger != shape:
            text = f"{trigger}, {text}"
        image_path = folder / f"{index:04d}.png"
        image = render(spec, rng, resolution)
        atomic_write_bytes(image_path, png_bytes(image))
        atomic_write_bytes(image_path.with_suffix(CAPTION_SUFFIX), (text + "\n").encode())
        atomic_write_bytes(folder / MASKS_DIR / image_path.name, png_bytes(_shape_mask(image)))
        written.append(image_path)
    return written


def _shape_mask(image) -> "Image.Image":
    """The render's foreground (pixels whose colour differs from the border's) as a white-on-black L image."""
    from difflab.data.foreground import foreground_mask
    from difflab.data.shapes import image_to_tensor

    mask = foreground_mask(image_to_tensor(image)[None])[0, 0]  # (H, W) of 0/1
    return Image.fromarray((mask.numpy() * 255).astype(np.uint8), mode="L")
