"""ControlNet conditioning: what a control is (kind, image, weight, model) and the preprocessors that make its map.

A ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models") is steered by a
map: white edges on black for canny, scribble and soft edges, a near-is-bright depth image, a pose skeleton.
The preprocessors here turn an ordinary picture into that map; kind ``none`` (alias ``image``) takes the picture
as a ready-made map, as A1111's "Module: none".

- canny: OpenCV's Canny on the RGB image (OpenCV takes the strongest channel gradient, so two colours of equal
  brightness still give an edge), thresholds ``low``/``high`` (A1111's defaults 100/200).
- scribble: the XDoG-style difference of Gaussians A1111 calls ``scribble_xdog``: bold binary strokes.
- softedge: the gradient magnitude of a lightly blurred image, scaled to 0-255: soft, graded edges in the spirit
  of HED/PiDiNet, without their networks.
- depth: transformers' depth-estimation pipeline with a hub model; offline, only from the local cache.
- pose: controlnet-aux's OpenPose, only where it is installed and its weights are in the local cache.

Maps are made at the output size: the picture is resized first, so edges are one pixel wide at the size the
ControlNet sees them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

Kind = Literal["canny", "scribble", "softedge", "depth", "pose", "none"]
KINDS: tuple[str, ...] = ("canny", "scribble", "softedge", "depth", "pose", "none")
KIND_ALIASES = {"image": "none", "soft_edge": "softedge", "hed": "softedge", "openpose": "pose"}
CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's and the diffusers docs' canny thresholds
SCRIBBLE_THRESHOLD = 32  # A1111's scribble_xdog default threshold
MAX_SCALE = 2.0  # A1111's "Control Weight" slider range
MAX_THRESHOLD = 2048  # Canny compares L1 Sobel magnitudes: up to 4 * 255 * 2 on an 8-bit image
DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"  # small (25M), safetensors, transformers-native
POSE_MODEL = "lllyasviel/Annotators"  # where controlnet-aux's OpenposeDetector finds body_pose_model.pth


def canonical_kind(kind: str) -> str:
    name = KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if name not in KINDS:
        raise ValueError(f"must be one of {', '.join(KINDS)} (or 'image' for a ready-made map); got {kind!r}")
    return name


class ControlSpec(BaseModel):
    """One ControlNet of a request: a preprocessor (kind), the image it reads, its weight, and which ControlNet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = Field(description="preprocessor: canny, scribble, softedge, depth, pose, or none (a ready map)")
    image: str = Field(min_length=1, description="the picture the preprocessor reads (kind none: the map itself)")
    scale: float = Field(1.0, ge=0, le=MAX_SCALE, description="conditioning scale (A1111's Control Weight)")
    model: Optional[str] = Field(None, description="ControlNet: a kind name from the registry, a diffusers folder "
                                 "or a cached hub id [default: the registry's ControlNet for the kind and model]")
    low: Optional[int] = Field(None, ge=0, le=MAX_THRESHOLD, description=f"canny low threshold [{CANNY_LOW}]; "
                               f"scribble threshold [{SCRIBBLE_THRESHOLD}]")
    high: Optional[int] = Field(None, ge=0, le=MAX_THRESHOLD, description=f"canny high threshold [{CANNY_HIGH}]")

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value):
        return canonical_kind(str(value))

    @field_validator("scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _thresholds_fit_kind(self) -> "ControlSpec":
        if self.high is not None and self.kind != "canny":
            raise ValueError(f"high: only canny has a high threshold (kind is {self.kind})")
        if self.low is not None and self.kind not in ("canny", "scribble"):
            raise ValueError(f"low: only canny and scribble have a threshold (kind is {self.kind})")
        low, high = self.thresholds()
        if self.kind == "canny" and low > high:
            raise ValueError(f"low: the canny low threshold {low} is above the high threshold {high}")
        return self

    def thresholds(self) -> tuple[Optional[int], Optional[int]]:
        """(low, high) with the defaults filled in: what the preprocessor uses and the metadata records."""
        if self.kind == "canny":
            return (CANNY_LOW if self.low is None else self.low), (CANNY_HIGH if self.high is None else self.high)
        if self.kind == "scribble":
            return (SCRIBBLE_THRESHOLD if self.low is None else self.low), None
        return None, None


def parse_control(text: str) -> dict:
    """``KIND:IMAGE[:SCALE]`` -> the fields of a ControlSpec (validated when the request is built). The scale is
    taken only when the last part is a number, so image paths with colons (``C:\\maps\\a.png``) still work."""
    kind, separator, rest = text.partition(":")
    if not separator or not rest or not kind:
        raise ValueError(f"must be KIND:IMAGE[:SCALE] (e.g. canny:photo.png:0.8); got {text!r}")
    fields: dict = {"kind": kind, "image": rest}
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            fields.update(image=head, scale=float(tail))
        except ValueError:
            pass
    return fields


# ---- preprocessors: PIL RGB picture in, PIL RGB map out (same size) ----


def _array(image: "Image.Image"):
    import numpy as np

    return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8


def _rgb_map(gray) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(gray).convert("RGB")  # ControlNets take 3 channels; a map repeats its one


def canny(image: "Image.Image", low: int = CANNY_LOW, high: int = CANNY_HIGH) -> "Image.Image":
    """White one-pixel edges on black: cv2.Canny with hysteresis thresholds ``low`` < ``high``."""
    import cv2

    return _rgb_map(cv2.Canny(_array(image), low, high))


def scribble(image: "Image.Image", threshold: int = SCRIBBLE_THRESHOLD) -> "Image.Image":
    """A1111's scribble_xdog: a narrow minus a wide Gaussian blur (sigma 0.5 vs 5), strongest channel, thresholded."""
    import cv2
    import numpy as np

    pixels = _array(image).astype(np.float32)
    narrow = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    wide = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    strength = np.max(wide - narrow, axis=2)  # (H, W): bright where a pixel is darker than its surroundings
    return _rgb_map(np.where(2 * strength.clip(0, 255) > threshold, 255, 0).astype(np.uint8))


def softedge(image: "Image.Image") -> "Image.Image":
    """Graded edges: Sobel gradient magnitude of the (sigma 1) blurred image, strongest channel, scaled to 0-255."""
    import cv2
    import numpy as np

    pixels = cv2.GaussianBlur(_array(image).astype(np.float32), (0, 0), 1.0)
    dx = cv2.Sobel(pixels, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(pixels, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(dx * dx + dy * dy).max(axis=2)  # (H, W)
    peak = float(magnitude.max())
    scaled = magnitude / peak * 255 if peak > 0 else magnitude
    return _rgb_map(scaled.round().astype(np.uint8))


def _cached_snapshot(repo_id: str, what: str) -> str:
    from difflab.engine.registry import hub_snapshot

    return str(hub_snapshot(repo_id, f"{what} needs the model {repo_id!r}, which"))


def check_available(kind: str, allow_unsafe_pickle: bool = False) -> None:
    """A ValueError naming what is missing when ``kind``'s model or package is not on this machine."""
    if kind == "depth":
        _cached_snapshot(DEPTH_MODEL, "kind depth")
    elif kind == "pose":
        try:
            import controlnet_aux  # noqa: F401
        except ImportError:
            raise ValueError("kind pose needs controlnet-aux: pip install controlnet-aux") from None
        _cached_snapshot(POSE_MODEL, "kind pose")
        if not allow_unsafe_pickle:  # OpenposeDetector's weights exist only as .pth pickles
            raise ValueError(f"kind pose: controlnet-aux's OpenPose weights ({POSE_MODEL}) are .pth pickles, which "
                             "can run code when loaded; pass allow_unsafe_pickle if you trust them")


def depth(image: "Image.Image") -> "Image.Image":
    """Relative depth (near = bright) from transformers' depth-estimation pipeline, from the local cache only."""
    from transformers import pipeline

    folder = _cached_snapshot(DEPTH_MODEL, "kind depth")
    estimator = pipeline("depth-estimation", model=folder)
    return estimator(image.convert("RGB"))["depth"].convert("RGB").resize(image.size)


def pose(image: "Image.Image") -> "Image.Image":  # pragma: no cover - needs controlnet-aux and its weights
    from controlnet_aux import OpenposeDetector

    detector = OpenposeDetector.from_pretrained(_cached_snapshot(POSE_MODEL, "kind pose"))
    return detector(image.convert("RGB"), detect_resolution=min(image.size), image_resolution=min(image.size)
                    ).convert("RGB").resize(image.size)


def preprocess(kind: str, image: "Image.Image", low: Optional[int] = None, high: Optional[int] = None,
               *, allow_unsafe_pickle: bool = False) -> "Image.Image":
    """The control map of ``image`` for ``kind`` (same size as ``image``)."""
    kind = canonical_kind(kind)
    check_available(kind, allow_unsafe_pickle)
    if kind == "canny":
        low, high = (CANNY_LOW if low is None else low), (CANNY_HIGH if high is None else high)
        if not 0 <= low <= high:
            raise ValueError(f"low: the canny thresholds must satisfy 0 <= low <= high; got {low}, {high}")
        return canny(image, low, high)
    if kind == "scribble":
        return scribble(image, SCRIBBLE_THRESHOLD if low is None else low)
    if kind == "softedge":
        return softedge(image)
    if kind == "depth":
        return depth(image)
    if kind == "pose":
        return pose(image)
    return image.convert("RGB")


def resized(image: "Image.Image", width: int, height: int, field: str = "image") -> "Image.Image":
    """``image`` at the output size. Aspect ratios more than 1% apart are an error, not a silent stretch."""
    from PIL import Image

    if image.size == (width, height):
        return image
    if abs(image.width / image.height - width / height) > 0.01 * (width / height):
        raise ValueError(f"{field}: its size {image.width}x{image.height} does not have the output's aspect ratio "
                         f"({width}x{height}); crop it, or give width and height in its proportions")
    return image.resize((width, height), Image.LANCZOS)
