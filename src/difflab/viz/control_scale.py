"""A ControlNet's conditioning scale as a picture: one prompt and the same seeds at several scales, one row per
scale, each row with its measured edge F1 (the canny edges of the images against the control's canny map, 2 px
tolerance: difflab.eval.edges). Scale 0 is the model without the ControlNet's pull. ``difflab viz control-scale``
draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class ScaleSweep:
    scales: tuple[float, ...]
    seeds: int
    control_map: Any  # the map the ControlNet saw, at the output size (PIL)
    images: tuple[tuple[Any, ...], ...]  # per scale, one image per seed
    f1: tuple[Optional[float], ...]  # per scale; None when the kind is not canny (no edge map to compare with)

    def table(self) -> str:
        lines = ["| conditioning scale | edge F1 |", "|---:|---:|"]
        lines += [f"| {scale:g} | {'-' if f1 is None else f'{f1:.3f}'} |" for scale, f1 in zip(self.scales, self.f1)]
        return "\n".join(lines)

    def grid(self, scale: int = 2):
        """The control map first in every row, then the seeds."""
        from difflab.viz.grid import make_grid

        tiles = [tile for row in self.images for tile in (self.control_map.convert("RGB"), *row)]
        return make_grid(tiles, columns=1 + self.seeds, scale=scale,
                         row_labels=[f"s {value:g}" for value in self.scales])


def control_scale_sweep(model: str, picture: str, prompt: str, scales: Sequence[float] = (0.0, 0.5, 1.0, 1.5), *,
                        kind: str = "canny", seeds: int = 3, seed: int = 0, controlnet: Optional[str] = None,
                        cache: Any = None, progress: Optional[Callable[[int], None]] = None,
                        **settings: Any) -> ScaleSweep:
    """Draw ``prompt`` with seeds ``seed .. seed + seeds - 1`` under a ``kind`` ControlNet reading the image file
    ``picture``, once per scale; ``settings`` are further request fields (steps, guidance, ...)."""
    from PIL import Image

    from difflab.engine.control import canonical_kind, preprocess, resized
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.eval.edges import image_edge_f1, mean_f1

    if not scales:
        raise ValueError("scales: need at least one")
    kind = canonical_kind(kind)
    cache = cache if cache is not None else PipelineCache()
    images, f1 = [], []
    for value in scales:
        control = {"kind": kind, "image": str(picture), "scale": float(value)}
        if controlnet:
            control["model"] = controlnet
        row = run(build_request(prompt=prompt, model=model, n=seeds, seed=seed, controls=[control], **settings),
                  cache).images
        if progress is not None:
            progress(seeds)
        images.append(tuple(row))
    with Image.open(picture) as opened:
        control_map = preprocess(kind, resized(opened.convert("RGB"), *images[0][0].size, field="picture"))
    for row in images:
        f1.append(mean_f1([image_edge_f1(image, control_map) for image in row]) if kind == "canny" else None)
    return ScaleSweep(tuple(float(s) for s in scales), seeds, control_map, tuple(images), tuple(f1))
