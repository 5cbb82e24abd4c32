"""A LoRA's weight as a picture: the same prompts and seeds at several ``--lora PATH:WEIGHT`` values, one row per
weight, with what the adherence analyzer reads off each row (on shapes-world prompts).

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

    def table(self) -> str:
        """Markdown: per weight, the share of images the analyzer reads with the asked shape and colour."""
        lines = ["| LoRA weight | shape right | colour right |", "|---:|---:|---:|"]
        for weight, report in zip(self.weights, self.reports):
            cells = ["-", "-"] if report is None else [_percent(report.accuracy["shape"]),
                                                       _percent(report.accuracy["color"])]
            lines.append(f"| {weight:g} | {cells[0]} | {cells[1]} |")
        return "\n".join(lines)

    def grid(self, scale: int = 2):
        from difflab.viz.grid import make_grid

        tiles = [image for row in self.images for image in row]
        return make_grid(tiles, columns=len(self.prompts) * self.seeds, scale=scale,
                         row_labels=[f"w {weight:g}" for weight in self.weights])


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def lora_weight_sweep(model: str, lora: str, prompts: Sequence[str], weights: Sequence[float] = (0.0, 0.5, 1.0, 1.5),
                      *, seeds: int = 2, seed: int = 0, cache: Any = None,
                      progress: Optional[Callable[[int], None]] = None, **settings: Any) -> WeightSweep:
    """Draw every prompt with seeds ``seed .. seed + seeds - 1`` at each weight of ``lora`` (a path or name, no
    ``:WEIGHT``); ``settings`` are further request fields (steps, guidance, other ``loras`` kept at every weight)."""
    from difflab.eval import t2i
    from difflab.eval.adherence import parse_prompt, score
    from difflab.engine.lora import parse_lora_spec
    from difflab.engine.pipeline import PipelineCache

    if not prompts:
        raise ValueError("prompts: need at least one")
    if not weights:
        raise ValueError("weights: need at least one")
    if parse_lora_spec(lora).source != lora.strip():
        raise ValueError(f"lora: give it without ':WEIGHT' (the sweep sets the weights); got {lora!r}")
    cache = cache if cache is not None else PipelineCache()
    others = list(settings.pop("loras", ()))
    measured = any(parse_prompt(p).shape is not None for p in prompts)
    images, reports = [], []
    for weight in weights:
        loras = others + ([f"{lora}:{weight:g}"] if weight != 0 else [])
        groups = t2i.generate(prompts, model=model, seeds_per_prompt=seeds, seed=seed, cache=cache,
                              progress=progress, loras=loras, **settings)
        row = [image for group in groups for image in group]
        images.append(tuple(row))
        reports.append(score(row, [p for p in prompts for _ in range(seeds)]) if measured else None)
    return WeightSweep(tuple(float(w) for w in weights), tuple(prompts), seeds, tuple(images), tuple(reports))
