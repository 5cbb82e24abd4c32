"""``difflab explain guidance``: classifier-free guidance, adherence against variety, measured per scale."""

from __future__ import annotations

from typing import Iterator, Sequence

from difflab.explain.common import Context, compare, listing, percent, save, wrap

PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star")
SCALES = (1.0, 3.0, 7.5, 15.0)
SEEDS = 2


def run(ctx: Context) -> Iterator[str]:
    from difflab.viz.guidance import guidance_plot

    yield "Classifier-free guidance runs the model twice a step, with and without the prompt, and pushes past"
    yield "the prompt's direction:  eps = eps_uncond + s (eps_cond - eps_uncond).  s = 1 is no guidance."
    yield f"Sweeping s on {ctx.model}, {len(PROMPTS)} prompts x {SEEDS} seeds, read back by the shapes analyzer:"
    drawn = guidance_plot(ctx.model, PROMPTS, SCALES, seeds=SEEDS, seed=ctx.seed)
    yield from drawn.table().splitlines()
    yield from wrap(sentences(drawn.result.rows, len(PROMPTS) * SEEDS))
    yield (f"figure (rows: guidance {', '.join(f'{s:g}' for s in SCALES)}; columns: seeds {ctx.seed}.."
           f"{ctx.seed + SEEDS - 1} of each prompt, the same in every row):")
    yield str(save(drawn.grid(), ctx, "guidance.png"))


def sentences(rows: Sequence, images_per_row: int) -> str:
    """The trade-off as this run measured it: adherence (shape and colour right) at the lowest, best and highest
    scale, and where the seeds varied most and least. Nothing is claimed that the rows do not show."""
    low, high = rows[0], rows[-1]
    best_value = max(r.shape_and_color for r in rows)
    best = [r for r in rows if abs(r.shape_and_color - best_value) < 1e-9]
    text = (f"With {images_per_row} images a row, one image is {percent(1 / images_per_row)}. "
            f"At s = {low.guidance:g}, {percent(low.shape_and_color)} come out with the asked shape and colour. ")
    text += (f"Adherence is highest, {percent(best_value)}, at s = "
             f"{listing([f'{r.guidance:g}' for r in best])}. ")
    if high not in best:
        text += (f"At s = {high.guidance:g} it is {percent(high.shape_and_color)}, "
                 f"{compare(high.shape_and_color, best_value)} than at the best scale: pushing harder than that "
                 "overshoots what the training images look like. ")
    elif low not in best:
        text += f"Raising s from {low.guidance:g} to {high.guidance:g} made the images follow the prompt more often. "
    most = max(rows, key=lambda r: r.pixel_diversity)
    least = min(rows, key=lambda r: r.pixel_diversity)
    text += (f"The seeds differ most at s = {most.guidance:g} (pixel diversity {most.pixel_diversity:.3f}) and least "
             f"at s = {least.guidance:g} ({least.pixel_diversity:.3f}).")
    if high.pixel_diversity < low.pixel_diversity:
        text += (f" At s = {high.guidance:g} they differ less than at s = {low.guidance:g} ({high.pixel_diversity:.3f} "
                 f"against {low.pixel_diversity:.3f}): stronger guidance pulls the seeds towards the same picture.")
    else:
        text += (f" At s = {high.guidance:g} they differ no less than at s = {low.guidance:g} "
                 f"({high.pixel_diversity:.3f} against {low.pixel_diversity:.3f}).")
    return text
