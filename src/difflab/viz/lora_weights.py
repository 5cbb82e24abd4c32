"""A LoRA's weight as a picture: the same prompts and seeds at several ``--lora PATH:WEIGHT`` values, one row per
weight, with what the adherence analyzer reads off each row (on shapes-world prompts). The rows are an X/Y/Z plot
(difflab.engine.xyz's ``lora-weight`` axis), drawn and labelled by the same code as ``difflab xyz``.

Weight 0 is drawn without the LoRA at all, so the first row is the "before" of a before/after; the engine unloads
the LoRA after every request, so rows cannot leak into each other. ``difflab viz lora-weights`` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from difflab.eval.adherence import AdherenceReport


@dataclass(frozen=True)
class WeightSweep:
    weights: tuple[float, ...]
    prompts: tuple[str, ...]  # one per column group; each prompt has ``seeds`` columns
    seeds: int
    images: tuple[tuple[Any, ...], ...]  # per weight: prompt-major, seed-minor PIL images
    reports: tuple[Optional[AdherenceReport], ...]  # per weight; None where no prompt names a shapes-world shape
    plot: Any = None  # the SweepPlot (difflab.viz.sweep_plot) the rows were drawn as

    def table(self) -> str:
        """Markdown: per weight, the share of images the analyzer reads with the asked shape and colour."""
        lines = ["| LoRA weight | shape right | colour right |", "|---:|---:|---:|"]
        for weight, report in zip(self.weights, self.reports):
            cells = ["-", "-"] if report is None else [_percent(report.accuracy["shape"]),
                                                       _percent(report.accuracy["color"])]
            lines.append(f"| {weight:g} | {cells[0]} | {cells[1]} |")
        return "\n".join(lines)

    def grid(self):
        """The X/Y/Z grid: rows "LoRA weight: W", columns "Seed: S", one block per prompt ("Prompt S/R: ...")."""
        return self.plot.grid()


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def lora_weight_sweep(model: str, lora: str, prompts: Sequence[str], weights: Sequence[float] = (0.0, 0.5, 1.0, 1.5),
                      *, seeds: int = 2, seed: int = 0, cache: Any = None,
                      progress: Optional[Callable[[int], None]] = None, **settings: Any) -> WeightSweep:
    """Draw every prompt with seeds ``seed .. seed + seeds - 1`` at each weight of ``lora`` (a path or name, no
    ``:WEIGHT``), as an X/Y/Z plot with a ``lora-weight`` axis; ``settings`` are further request fields (steps,
    guidance, ...)."""
    from difflab.eval.adherence import parse_prompt, score
    from difflab.engine.lora import parse_lora_spec
    from difflab.viz.sweep_plot import sweep_plot

    if not weights:
        raise ValueError("weights: need at least one")
    if parse_lora_spec(lora).source != lora.strip():
        raise ValueError(f"lora: give it without ':WEIGHT' (the sweep sets the weights); got {lora!r}")
    if settings.get("loras"):
        raise ValueError("loras: the sweep draws the one LoRA it is given (xyz's lora-weight axis sets one weight)")
    base = {**settings, "model": model, "loras": [lora.strip()]}
    drawn = sweep_plot(base, "lora-weight", [float(w) for w in weights], prompts, seeds=seeds, seed=seed,
                       cache=cache, progress=progress)
    measured = any(parse_prompt(p).shape is not None for p in prompts)
    rows = [tuple(drawn.row(index)) for index in range(drawn.rows)]
    asked = [p for p in prompts for _ in range(seeds)]
    reports = tuple(score(list(row), asked) if measured else None for row in rows)
    return WeightSweep(tuple(float(w) for w in weights), tuple(prompts), seeds, tuple(rows), reports, drawn)
