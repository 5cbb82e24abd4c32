"""Samplers x steps on a digits checkpoint, as one picture: what each sampler draws from the same seeds, with the
measured quality (:mod:`difflab.eval.digits_metrics`) and time of every cell.

Every cell draws the same samples: ``per_class`` of each digit, sample i seeded ``seed + i``
(:mod:`difflab.core.generate`), so a column shows the same starting noise integrated by different samplers and a
row the same sampler at more steps. The Frechet distance of n samples is biased upwards at small n; the figure
prints the noise floor (what n real digits score) so a number can be read against the best possible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from difflab.core.checkpoint import LoadedModel
from difflab.core.generate import SampleRequest, sample_images
from difflab.eval.digits_metrics import DigitScores, NoiseFloor, evaluate_digit_samples, noise_floor

DEFAULT_SAMPLERS = ("ddim", "euler-ancestral", "dpmpp-2m")
DEFAULT_STEPS = (5, 10, 20)


@dataclass(frozen=True)
class Cell:
    sampler: str
    steps: int
    images: torch.Tensor = field(repr=False)  # (N, 1, 8, 8) in [-1, 1], sample i from seed + i
    scores: DigitScores
    seconds: float  # sampling only, not scoring (wall clock)
    model_calls: int  # network passes; both guidance branches run as one batch, Heun calls twice a step


@dataclass(frozen=True)
class SamplerComparison:
    cells: tuple[Cell, ...]
    labels: tuple[int, ...]
    guidance: float
    floor: NoiseFloor  # FD of as many real digits: the best any cell can score

    def cell(self, sampler: str, steps: int) -> Cell:
        return next(c for c in self.cells if c.sampler == sampler and c.steps == steps)

    @property
    def samplers(self) -> list[str]:
        return list(dict.fromkeys(c.sampler for c in self.cells))

    @property
    def steps(self) -> list[int]:
        return list(dict.fromkeys(c.steps for c in self.cells))

    def table(self) -> str:
        """A markdown table, one row per cell, with the noise floor as the last row."""
        lines = ["| sampler | steps | model calls | FD (lower is better) | class accuracy | seconds |",
                 "|---|---:|---:|---:|---:|---:|"]
        for c in self.cells:
            lines.append(f"| {c.sampler} | {c.steps} | {c.model_calls} | {c.scores.frechet:.1f} "
                         f"| {c.scores.accuracy:.1%} | {c.seconds:.2f} |")
        lines.append(f"| *{self.floor.n} real digits* | | | {self.floor.frechet:.1f} ± {self.floor.spread:.1f} | | |")
        return "\n".join(lines)


def compare_samplers(
    model: LoadedModel, samplers: Sequence[str] = DEFAULT_SAMPLERS, steps: Sequence[int] = DEFAULT_STEPS, *,
    per_class: int = 10, guidance: float = 3.0, seed: int = 0,
    progress: Optional[Callable[[Cell], None]] = None,
) -> SamplerComparison:
    """Draw and score every sampler x steps cell on the same labels and seeds."""
    num_classes = model.spec.unet.num_classes
    if num_classes is None:
        raise ValueError("checkpoint: the sampler comparison scores class accuracy and needs a class-conditional model")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1; got {per_class}")
    if not samplers or not steps:
        raise ValueError("samplers and steps must each name at least one value")
    labels = tuple(digit for digit in range(num_classes) for _ in range(per_class))
    requests = [SampleRequest(labels=labels, sampler=s, steps=n, guidance=guidance, seed=seed)
                for s in samplers for n in steps]
    for request in requests:  # every bad name or step count is reported before minutes of sampling
        request.validate(model)
    cells = []
    for request in requests:
        cell = _draw(model, request, labels)
        cells.append(cell)
        if progress is not None:
            progress(cell)
    return SamplerComparison(tuple(cells), labels, guidance, noise_floor(max(2, len(labels))))


def _draw(model: LoadedModel, request: SampleRequest, labels: tuple[int, ...]) -> Cell:
    images, seconds, calls = timed_network_calls(model.model, lambda: sample_images(model, request))
    return Cell(request.sampler, request.steps, images, evaluate_digit_samples(images, labels), seconds, calls)


def timed_network_calls(network: torch.nn.Module, draw: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, int]:
    """(draw()'s result, wall seconds, forward calls of ``network``): what a sampler costs, counted not assumed
    (Heun calls the network twice per step, CFG batches both branches into one call)."""
    calls = 0

    def count_call(module, inputs) -> None:
        nonlocal calls
        calls += 1

    hook = network.register_forward_pre_hook(count_call)
    try:
        started = time.perf_counter()
        result = draw()
        seconds = time.perf_counter() - started
    finally:
        hook.remove()
    return result, seconds, calls


def plot_sampler_comparison(result: SamplerComparison, path: str | Path, *, shown_per_class: int = 2) -> Path:
    """Rows: samplers; columns: step counts. Each panel shows the first ``shown_per_class`` sample(s) of every
    digit (the same seeds in every panel) and is titled with its FD, class accuracy and seconds."""
    from difflab.viz.curves import _pyplot
    from difflab.viz.grid import make_grid, to_pil

    plt = _pyplot()
    per_class = len(result.labels) // len(set(result.labels))
    picked = [i for i in range(len(result.labels)) if i % per_class < shown_per_class]
    rows, columns = result.samplers, result.steps
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(3.4 * len(columns), 0.8 + 1.0 * len(rows)),
                                dpi=100, squeeze=False)
    for r, sampler in enumerate(rows):
        for c, steps in enumerate(columns):
            cell = result.cell(sampler, steps)
            tiles = to_pil(cell.images[picked])
            axis = axes[r][c]
            axis.imshow(make_grid(tiles, columns=len(set(result.labels)), scale=2, padding=1), cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"FD {cell.scores.frechet:.0f} | acc {cell.scores.accuracy:.0%} | {cell.seconds:.1f}s",
                           fontsize=8)
            if c == 0:
                axis.set_ylabel(sampler, fontsize=9)
            if r == len(rows) - 1:
                axis.set_xlabel(f"{steps} steps", fontsize=9)
    figure.suptitle(f"same seeds in every panel; guidance {result.guidance:g}; FD of {result.floor.n} samples "
                    f"(real digits: {result.floor.frechet:.0f} ± {result.floor.spread:.0f})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
