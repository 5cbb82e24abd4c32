"""Edge adherence: how well the edges of a generated image follow the control edges it was given.

The measure is the F1 score of boundary matching with a distance tolerance, as in the BSDS boundary benchmark
(Martin, Fowlkes & Malik 2004), with nearest-distance matching instead of their one-to-one assignment:

    precision = fraction of the output's edge pixels within ``tolerance`` pixels of a control edge pixel
    recall    = fraction of the control's edge pixels within ``tolerance`` pixels of an output edge pixel
    F1        = 2 P R / (P + R)

Distances are Euclidean between pixel centres, so ``tolerance=1`` accepts the 4 side neighbours and
``tolerance=1.5`` the 8 neighbours too. The output's edges are OpenCV Canny edges at the same thresholds as the
control's canny preprocessor (engine.control), so a perfect copy of the control image scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from difflab.engine.control import CANNY_HIGH, CANNY_LOW

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_TOLERANCE = 2.0  # pixels; at 64 px that is 3% of the side, about a shape's anti-aliased border and a pixel


@dataclass(frozen=True)
class EdgeScore:
    precision: float
    recall: float
    f1: float
    output_edges: int  # edge pixels found in the output
    control_edges: int  # edge pixels of the control


def canny_edges(image: "Image.Image", low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """(H, W) bool: Canny edges of an RGB image (OpenCV uses the strongest channel's gradient)."""
    import cv2

    return cv2.Canny(np.asarray(image.convert("RGB")), low, high) > 0


def edge_mask(control_map: "Image.Image") -> np.ndarray:
    """(H, W) bool: the white pixels of a control map (white edges on black)."""
    return np.asarray(control_map.convert("L")) >= 128


def _distance_to(edges: np.ndarray) -> np.ndarray:
    """(H, W) Euclidean distance from every pixel to the nearest True pixel of ``edges`` (inf when none)."""
    from scipy.ndimage import distance_transform_edt

    if not edges.any():
        return np.full(edges.shape, np.inf)
    return distance_transform_edt(~edges)


def edge_f1(output: np.ndarray, control: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> EdgeScore:
    """Tolerant precision/recall/F1 of ``output`` edges against ``control`` edges (both (H, W) bool)."""
    output, control = np.asarray(output, dtype=bool), np.asarray(control, dtype=bool)
    if output.shape != control.shape:
        raise ValueError(f"output: edge maps must have the same shape; got {output.shape} and {control.shape}")
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise ValueError(f"tolerance: must be a finite number of pixels >= 0; got {tolerance}")
    n_output, n_control = int(output.sum()), int(control.sum())
    if n_output == 0 and n_control == 0:
        return EdgeScore(1.0, 1.0, 1.0, 0, 0)  # nothing to find and nothing found: a perfect match
    matched_output = int((_distance_to(control)[output] <= tolerance).sum())
    matched_control = int((_distance_to(output)[control] <= tolerance).sum())
    precision = matched_output / n_output if n_output else 0.0
    recall = matched_control / n_control if n_control else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return EdgeScore(precision, recall, f1, n_output, n_control)


def image_edge_f1(image: "Image.Image", control_map: "Image.Image", tolerance: float = DEFAULT_TOLERANCE,
                  low: int = CANNY_LOW, high: int = CANNY_HIGH) -> EdgeScore:
    """F1 of the canny edges of a generated ``image`` against a canny ``control_map`` of the same size."""
    if image.size != control_map.size:
        raise ValueError(f"image: size {image.size} differs from the control map's {control_map.size}")
    return edge_f1(canny_edges(image, low, high), edge_mask(control_map), tolerance)


def mean_f1(scores: Sequence[EdgeScore]) -> float:
    if not scores:
        raise ValueError("scores: need at least one")
    return float(np.mean([score.f1 for score in scores]))
