"""A ControlNet's conditioning scale as a picture: one prompt and the same seeds at several scales, one row per
scale, each row with its measured edge F1 (the canny edges of the images against the control's canny map, 2 px
tolerance: difflab.eval.edges). Scale 0 is the model without the ControlNet's pull. The rows are an X/Y/Z plot
(difflab.engine.xyz's ``control-scale`` axis), drawn and labelled by the same code as ``difflab xyz``.
``difflab viz control-scale`` draws it.
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
    plot: Any = None  # the SweepPlot (difflab.viz.sweep_plot) the rows were drawn as

    def table(self) -> str:
        lines = ["| conditioning scale | edge F1 |", "|---:|---:|"]
        lines += [f"| {scale:g} | {'-' if f1 is None else f'{f1:.3f}'} |" for scale, f1 in zip(self.scales, self.f1)]
        return "\n".join(lines)

    def grid(self):
        """The control map, labelled, beside the X/Y/Z grid (rows "ControlNet weight: S", columns "Seed: N")."""
        from difflab.viz.grid import make_grid

        plot = self.plot.grid()
        side = self.images[0][0].width * max(1, 128 // self.images[0][0].width)  # the grid's tile size
        panel = make_grid([self.control_map.convert("RGB").resize((side, side))], columns=1,
                          labels=["control map"])
        return side_by_side(panel, plot)


def side_by_side(left, right, gap: int = 8):
    """Two images on one white canvas, tops aligned."""
    from PIL import Image

    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + gap, 0))
    return canvas


def control_scale_sweep(model: str, picture: str, prompt: str, scales: Sequence[float] = (0.0, 0.5, 1.0, 1.5), *,
                        kind: str = "canny", seeds: int = 3, seed: int = 0, controlnet: Optional[str] = None,
                        cache: Any = None, progress: Optional[Callable[[int], None]] = None,
                        **settings: Any) -> ScaleSweep:
    """Draw ``prompt`` with seeds ``seed .. seed + seeds - 1`` under a ``kind`` ControlNet reading the image file
    ``picture``, once per scale, as an X/Y/Z plot with a ``control-scale`` axis; ``settings`` are further request
    fields (steps, guidance, ...)."""
    from PIL import Image

    from difflab.engine.control import canonical_kind, preprocess, resized
    from difflab.eval.edges import image_edge_f1, mean_f1
    from difflab.viz.sweep_plot import sweep_plot

    if not scales:
        raise ValueError("scales: need at least one")
    kind = canonical_kind(kind)
    control = {"kind": kind, "image": str(picture), "scale": 1.0}
    if controlnet:
        control["model"] = controlnet
    drawn = sweep_plot({**settings, "model": model, "controls": [control]}, "control-scale",
                       [float(s) for s in scales], [prompt], seeds=seeds, seed=seed, cache=cache, progress=progress)
    images = [tuple(drawn.row(index)) for index in range(drawn.rows)]
    with Image.open(picture) as opened:
        control_map = preprocess(kind, resized(opened.convert("RGB"), *images[0][0].size, field="picture"))
    f1 = [mean_f1([image_edge_f1(image, control_map) for image in row]) if kind == "canny" else None
          for row in images]
    return ScaleSweep(tuple(float(s) for s in scales), seeds, control_map, tuple(images), tuple(f1), drawn)
