"""Images from a folder: every PNG/JPEG/WebP under it, resized and centre-cropped to a square.

Sub-folders name classes (``root/cat/1.png`` has label "cat"), as torchvision's ``ImageFolder``; images directly
in ``root`` make an unlabelled set with one class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from difflab.data.digits import LabelledImages

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_image_folder(root: str | Path, resolution: int, channels: int = 3) -> LabelledImages:
    """Load every image under ``root`` as (N, channels, resolution, resolution) in [-1, 1]."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"dataset folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    class_of = [p.parent.relative_to(root).as_posix() if p.parent != root else "" for p in paths]
    class_names = tuple(sorted(set(class_of)))
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(_square(image.convert("L" if channels == 1 else "RGB"), resolution))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1)  # (N, H, W[, C])
    pixels = pixels[:, None] if channels == 1 else pixels.permute(0, 3, 1, 2)
    labels = torch.tensor([class_names.index(c) for c in class_of], dtype=torch.long)
    return LabelledImages(pixels.contiguous(), labels, class_names)


def _square(image: Image.Image, resolution: int) -> np.ndarray:
    """Resize the short side to ``resolution`` and crop the centre."""
    width, height = image.size
    scale = resolution / min(width, height)
    resized = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), Image.BICUBIC)
    left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
    return np.asarray(resized.crop((left, top, left + resolution, top + resolution)))
