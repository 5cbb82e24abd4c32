"""Classifier-free guidance as a picture: the same prompts and seeds at several guidance scales, one row per scale,
with adherence and diversity measured per row (the numbers of difflab.eval.t2i.guidance_sweep). The rows are an
X/Y/Z plot (difflab.engine.xyz's ``guidance`` axis), so the grid is labelled "CFG Scale: s" down and "Seed: n"
across, one block per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class GuidancePlot:
    result: Any  # difflab.eval.t2i.SweepResult: rows of numbers (table()), images per scale, prompt, seed
    plot: Any  # the SweepPlot the images were drawn as

    def table(self) -> str:
        return self.result.table()

    def grid(self):
        return self.plot.grid()


def guidance_plot(model: str, prompts: Sequence[str], scales: Sequence[float] = (1.0, 3.0, 7.5, 15.0), *,
                  seeds: int = 2, seed: int = 0, cache: Any = None, progress: Optional[Callable[[int], None]] = None,
                  **settings: Any) -> GuidancePlot:
    """Draw ``prompts`` x seeds ``seed ..`` x ``scales`` as an X/Y/Z plot and measure every row as
    :func:`difflab.eval.t2i.guidance_sweep` does (shape and colour read back, pixel diversity between seeds,
    entropy of what the prompt left open)."""
    import numpy as np

    from difflab.eval.adherence import score
    from difflab.eval.t2i import SweepResult, SweepRow, attribute_entropy, pixel_diversity
    from difflab.viz.sweep_plot import sweep_plot

    if seeds < 2:
        raise ValueError(f"seeds: diversity needs at least 2 seeds per prompt; got {seeds}")
    drawn = sweep_plot({**settings, "model": model}, "guidance", [float(s) for s in scales], prompts, seeds=seeds,
                       seed=seed, cache=cache, progress=progress)
    rows, images = [], {}
    for index, scale in enumerate(drawn.plot.axes[1].values):
        flat = drawn.row(index)
        per_prompt = [flat[k * seeds:(k + 1) * seeds] for k in range(len(prompts))]
        report = score(flat, [p for p in prompts for _ in range(seeds)])
        entropies = [attribute_entropy(score(group, [p] * len(group))) for p, group in zip(prompts, per_prompt)]
        rows.append(SweepRow(guidance=scale, shape_and_color=report.shape_and_color_accuracy or 0.0,
                             color=report.accuracy["color"] or 0.0, shape=report.accuracy["shape"] or 0.0,
                             pixel_diversity=float(np.mean([pixel_diversity(g) for g in per_prompt])),
                             attribute_entropy=float(np.mean(entropies))))
        images[scale] = per_prompt
    return GuidancePlot(SweepResult(rows, list(prompts), images), drawn)


def sweep_result_grid(result: Any, prompts_shown: int = 4, seed: int = 0):
    """A labelled grid of a :class:`difflab.eval.t2i.SweepResult` drawn elsewhere (``difflab eval guidance-sweep``):
    the first seeds of a few prompts, laid out by xyz's grid code like :func:`guidance_plot`'s; ``seed``: the
    sweep's first seed, for the column labels."""
    from difflab.engine.xyz import KINDS, Axis, plot_grid

    chosen = list(range(0, len(result.prompts), max(1, len(result.prompts) // prompts_shown)))[:prompts_shown]
    scales = list(result.images)
    seeds = len(result.images[scales[0]][0])
    axes = [Axis(KINDS["seed"], tuple(range(seed, seed + seeds))), Axis(KINDS["guidance"], tuple(scales))]
    if len(chosen) > 1:
        axes.append(Axis(KINDS["prompt-sr"], tuple(result.prompts[j] for j in chosen)))
    images = {}
    for row, scale in enumerate(scales):
        for block, j in enumerate(chosen):
            for i, image in enumerate(result.images[scale][j]):
                images[(i, row) if len(chosen) == 1 else (i, row, block)] = image.convert("RGB")
    return plot_grid(type("Layout", (), {"axes": tuple(axes)})(), images)
