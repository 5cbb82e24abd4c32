"""Measurements of a text-to-image model on the shapes world, run through the generation engine.

Every image here is made by :func:`difflab.engine.pipeline.run` from a :class:`GenerationRequest`, the same path
as ``difflab generate``, so the numbers describe what users get. Three measurements:

- :func:`adherence`: every base shape x colour asked for, read back by the deterministic analyzer
  (:mod:`difflab.eval.adherence`);
- :func:`guidance_sweep`: the "recipe follower" trade-off of classifier-free guidance, adherence next to diversity;
- :func:`negative_prompt_effect`: how often an unwanted colour appears with and without a negative prompt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from difflab.data.shapes import BASE_SHAPES, COLORS
from difflab.eval.adherence import AdherenceReport, score, to_rgb_array

Progress = Optional[Callable[[int], None]]  # called with the number of images just finished


def full_prompts(per_pair: int = 1, seed: int = 0, shapes: Sequence[str] = BASE_SHAPES) -> list[str]:
    """Full captions covering every shape x colour pair ``per_pair`` times (background, position, size drawn
    from ``seed``): the prompt set of ``difflab eval adherence`` and of the training-time evaluation."""
    from difflab.train.t2i import evaluation_prompts

    return evaluation_prompts(per_pair * len(shapes) * len(COLORS), seed=seed, shapes=shapes)


def minimal_prompts(shapes: Sequence[str] = BASE_SHAPES) -> list[str]:
    """"a red circle": shape and colour only, leaving background, position and size to the model (and the seed)."""
    return [f"a {color} {shape}" for shape, color in itertools.product(shapes, COLORS)]


def generate(prompts: Sequence[str], *, model: str, seeds_per_prompt: int = 1, seed: int = 0,
             cache: Any = None, progress: Progress = None, **settings: Any) -> list[list[Any]]:
    """Images for each prompt: prompt j gets ``seeds_per_prompt`` images with seeds ``seed .. seed + k - 1``.

    ``settings`` are further GenerationRequest fields (guidance, steps, scheduler, negative_prompt, ...).
    Returns one list of PIL images per prompt.
    """
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    cache = cache if cache is not None else PipelineCache()
    images = []
    for prompt in prompts:
        request = build_request(prompt=prompt, model=model, n=seeds_per_prompt, seed=seed, **settings)
        images.append(run(request, cache).images)
        if progress is not None:
            progress(seeds_per_prompt)
    return images


def adherence(model: str, *, per_pair: int = 2, seed: int = 0, cache: Any = None, progress: Progress = None,
              **settings: Any) -> tuple[AdherenceReport, list[str], list[Any]]:
    """Score full-caption prompts for every base shape x colour (``per_pair`` prompts each, one image per prompt,
    image of prompt j seeded ``seed + j``). Returns the report, the prompts and the images."""
    prompts = full_prompts(per_pair, seed=seed)
    report, images = score_prompts(prompts, model=model, seed=seed, cache=cache, progress=progress, **settings)
    return report, prompts, images


def score_prompts(prompts: Sequence[str], *, model: str, seed: int = 0, cache: Any = None, progress: Progress = None,
                  **settings: Any) -> tuple[AdherenceReport, list[Any]]:
    """One image per prompt, prompt j's seeded ``seed + j``, and the analyzer's report on them."""
    from difflab.engine.pipeline import PipelineCache

    cache = cache if cache is not None else PipelineCache()  # one load for all prompts, not one per prompt
    images = []
    for j, prompt in enumerate(prompts):
        images += generate([prompt], model=model, seed=seed + j, cache=cache, progress=progress, **settings)[0]
    return score(images, prompts), images


def short_adherence(model: str, *, seeds_per_prompt: int = 1, seed: int = 0, cache: Any = None,
                    progress: Progress = None, **settings: Any) -> tuple[AdherenceReport, list[str], list[Any]]:
    """Score the short prompts ("a red circle", every base shape x colour) with ``seeds_per_prompt`` images each,
    seeded ``seed ..``: what the model draws where the prompt leaves background, position and size open. Returns
    the report, one prompt per image, and the images."""
    groups = generate(minimal_prompts(), model=model, seeds_per_prompt=seeds_per_prompt, seed=seed, cache=cache,
                      progress=progress, **settings)
    prompts = [prompt for prompt in minimal_prompts() for _ in range(seeds_per_prompt)]
    images = [image for group in groups for image in group]
    return score(images, prompts), prompts, images


def pixel_diversity(images: Sequence[Any]) -> float:
    """Mean RMS distance (0..1 scale) between every pair of images of one prompt: 0 when the seed changes nothing."""
    arrays = [to_rgb_array(image).astype(np.float64) / 255.0 for image in images]
    pairs = list(itertools.combinations(arrays, 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs]))


def attribute_entropy(report: AdherenceReport, fields: Sequence[str] = ("background", "position", "size")) -> float:
    """Mean Shannon entropy (bits) of the attributes a prompt left open, as read off the images.

    Under a prompt like "a red circle" a diverse model varies background, position and size across seeds; the
    maximum is log2(7) + log2(5) + log2(2) = 6.1 bits over the three fields (a background never equals the shape's
    colour), and 0 bits when every seed gives the same picture.
    """
    total = 0.0
    for name in fields:
        values = [getattr(reading, name) for reading in report.readings]
        _, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
        p = counts / counts.sum()
        total += float(-(p * np.log2(p)).sum())
    return total


@dataclass
class SweepRow:
    guidance: float
    shape_and_color: float  # accuracy, 0..1
    color: float
    shape: float
    pixel_diversity: float  # mean pairwise RMS distance between seeds of one prompt
    attribute_entropy: float  # bits of variety in what the prompt left open, per prompt


@dataclass
class SweepResult:
    rows: list[SweepRow]
    prompts: list[str]
    images: dict[float, list[list[Any]]] = field(repr=False)  # guidance -> per prompt -> per seed

    def table(self) -> str:
        lines = [f"{'guidance':>8} {'shape+color':>12} {'color':>7} {'shape':>7} {'pixel div.':>11} {'open attrs (bits)':>18}",
                 "-" * 68]
        for r in self.rows:
            lines.append(f"{r.guidance:>8g} {100 * r.shape_and_color:>11.1f}% {100 * r.color:>6.1f}% "
                         f"{100 * r.shape:>6.1f}% {r.pixel_diversity:>11.3f} {r.attribute_entropy:>18.2f}")
        return "\n".join(lines)


def guidance_sweep(model: str, guidances: Sequence[float] = (1.0, 3.0, 7.5, 15.0), *, seeds_per_prompt: int = 4,
                   seed: int = 0, prompts: Optional[Sequence[str]] = None, cache: Any = None,
                   progress: Progress = None, **settings: Any) -> SweepResult:
    """Adherence and diversity at each guidance scale, on the same prompts and seeds.

    Prompts default to "a COLOR SHAPE" for every base pair: they fix what adherence reads and leave background,
    position and size open, which is where diversity shows.
    """
    from difflab.engine.pipeline import PipelineCache

    cache = cache if cache is not None else PipelineCache()
    prompts = list(prompts) if prompts is not None else minimal_prompts()
    rows, images = [], {}
    for guidance in guidances:
        per_prompt = generate(prompts, model=model, seeds_per_prompt=seeds_per_prompt, seed=seed, cache=cache,
                              progress=progress, guidance=guidance, **settings)
        flat = [image for group in per_prompt for image in group]
        report = score(flat, [p for p in prompts for _ in range(seeds_per_prompt)])
        entropies = [attribute_entropy(score(group, [p] * len(group))) for p, group in zip(prompts, per_prompt)]
        rows.append(SweepRow(
            guidance=guidance, shape_and_color=report.shape_and_color_accuracy or 0.0,
            color=report.accuracy["color"] or 0.0, shape=report.accuracy["shape"] or 0.0,
            pixel_diversity=float(np.mean([pixel_diversity(group) for group in per_prompt])),
            attribute_entropy=float(np.mean(entropies)),
        ))
        images[guidance] = per_prompt
    return SweepResult(rows, prompts, images)


def sweep_grid(result: SweepResult, prompts_shown: int = 4, scale: int = 2, seed: int = 0):
    """One row per guidance scale ("CFG Scale: s"), columns the seeds ("Seed: n", from ``seed``) of a few prompts,
    one labelled block per prompt: difflab.viz.guidance's X/Y/Z layout. A PIL image. (``scale`` is kept for old
    callers: the xyz grid sizes tiles itself.)"""
    from difflab.viz.guidance import sweep_result_grid

    return sweep_result_grid(result, prompts_shown, seed=seed)


@dataclass
class NegativePromptEffect:
    prompt: str
    negative: str
    color: str  # the colour whose share is measured
    share_without: float
    share_with: float
    n: int
    images_without: list[Any] = field(repr=False)
    images_with: list[Any] = field(repr=False)

    def table(self) -> str:
        return (f"prompt {self.prompt!r}, {self.n} seeds\n"
                f"{'negative prompt':<24}{self.color + ' share':>12}\n" + "-" * 36 + "\n"
                f"{'(none)':<24}{100 * self.share_without:>11.1f}%\n"
                f"{self.negative!r:<24}{100 * self.share_with:>11.1f}%")


def negative_prompt_effect(model: str, prompt: str = "a circle", negative: str = "red", *, n: int = 32,
                           seed: int = 0, cache: Any = None, progress: Progress = None,
                           **settings: Any) -> NegativePromptEffect:
    """Share of images read as colour ``negative`` (a palette colour), with and without it as negative prompt,
    on the same seeds. With the negative prompt, CFG steers away from it: the share should fall to near zero."""
    from difflab.eval.adherence import read_image

    if negative not in COLORS:
        raise ValueError(f"negative must be one of the palette colours {', '.join(COLORS)}; got {negative!r}")
    without = generate([prompt], model=model, seeds_per_prompt=n, seed=seed, cache=cache, progress=progress,
                       **settings)[0]
    with_ = generate([prompt], model=model, seeds_per_prompt=n, seed=seed, cache=cache, progress=progress,
                     negative_prompt=negative, **settings)[0]

    def share(images: Sequence[Any]) -> float:
        return sum(read_image(image).color == negative for image in images) / len(images)

    return NegativePromptEffect(prompt, negative, negative, share(without), share(with_), n, without, with_)

