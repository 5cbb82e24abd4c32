"""The sweeps of the labs and of ``difflab viz`` / ``difflab explain`` as X/Y/Z plots (difflab.engine.xyz): columns
are seeds, rows the values swept (guidance, LoRA weight, ControlNet scale, clip skip), and several prompts are
the z axis (A1111's Prompt S/R), one block of columns each. So every such grid is planned, validated, drawn and
labelled by the same code as ``difflab xyz``, and its rows and columns say what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from difflab.engine.xyz import KINDS, Axis, Plot, draw_images, plan_plot, plot_grid


@dataclass(frozen=True)
class SweepPlot:
    plot: Plot
    images: dict[tuple[int, ...], Any]  # position (seed index, row index[, prompt index]) -> PIL image

    @property
    def rows(self) -> int:
        return len(self.plot.axes[1].values)

    def row(self, index: int) -> list[Any]:
        """Row ``index``'s images, prompt-major and seed-minor (the order of the grid's columns)."""
        seeds = len(self.plot.axes[0].values)
        prompts = len(self.plot.axes[2].values) if len(self.plot.axes) > 2 else 1
        return [self.images[(i, index) if len(self.plot.axes) == 2 else (i, index, k)]
                for k in range(prompts) for i in range(seeds)]

    def grid(self):
        return plot_grid(self.plot, self.images)


def sweep_plot(base: dict[str, Any], axis: str, values: Sequence[Any], prompts: Sequence[str], *, seeds: int,
               seed: int = 0, cache: Any = None, progress: Optional[Callable[[int], None]] = None) -> SweepPlot:
    """Plan and draw ``prompts`` x ``seeds`` seeds (``seed ..``) x ``values`` of the xyz axis ``axis``; ``base``
    holds the other request fields. ValueError naming the axis value a request cannot take, before drawing."""
    if not prompts:
        raise ValueError("prompts: need at least one")
    if not values:
        raise ValueError(f"{axis}: need at least one value")
    if len(set(prompts)) != len(prompts):
        raise ValueError("prompts: each prompt once")
    axes = [Axis(KINDS["seed"], tuple(range(seed, seed + seeds))), Axis(KINDS[axis], tuple(values))]
    if len(prompts) > 1:  # Prompt S/R on the first prompt: each value replaces it whole
        axes.append(Axis(KINDS["prompt-sr"], tuple(prompts)))
    plot = plan_plot({**base, "prompt": prompts[0]}, axes)
    return SweepPlot(plot, draw_images(plot, cache, on_cells=progress))
