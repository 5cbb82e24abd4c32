"""``difflab explain schedulers``: samplers and step counts on the digits model, with measured quality and time."""

from __future__ import annotations

from typing import Iterator

from difflab.explain.common import Context, compare, wrap

SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")
STEPS = (5, 20)


def run(ctx: Context) -> Iterator[str]:
    from difflab.core.checkpoint import load_model
    from difflab.viz.samplers import compare_samplers, plot_sampler_comparison

    yield "A sampler decides how to walk from noise back to an image. DDPM draws from the posterior with fresh"
    yield "noise at every step (built for 1000 steps); DDIM follows the deterministic ODE; DPM-Solver++ reuses the"
    yield "previous step's estimate (a second-order multistep method). Same model, same seeds, 5 and 20 steps:"
    model = load_model(ctx.digits)
    result = compare_samplers(model, list(SAMPLERS), list(STEPS), per_class=5, seed=ctx.seed)
    yield from result.table().splitlines()
    yield "FD: Frechet distance to the real digits (lower is better; real digits of the same count score the last"
    yield "row)."
    yield from wrap(sentences(result))
    yield "figure (rows: samplers; columns: step counts; each panel titled with its FD, accuracy and time):"
    yield str(plot_sampler_comparison(result, ctx.out / "schedulers.png"))


def sentences(result) -> str:
    """The comparison the table supports, read off its cells: DDPM against the best other sampler at the fewest
    steps, and the best cell against the real digits' floor."""
    few = min(result.steps)
    ddpm = result.cell("ddpm", few).scores.frechet
    others = [c for c in result.cells if c.steps == few and c.sampler != "ddpm"]
    best_few = min(others, key=lambda c: c.scores.frechet)
    best = min(result.cells, key=lambda c: c.scores.frechet)
    word = compare(best_few.scores.frechet, ddpm, lower="beats", higher="does worse than", same="ties with")
    text = (f"At {few} steps {best_few.sampler} (FD {best_few.scores.frechet:.1f}) {word} DDPM "
            f"(FD {ddpm:.1f})")
    text += (": fewer steps need a smarter step, not more noise. " if best_few.scores.frechet < ddpm else
             ": on this checkpoint and seed DDPM holds up at few steps. ")
    text += (f"The best cell is {best.sampler} at {best.steps} steps (FD {best.scores.frechet:.1f}), against "
             f"{result.floor.frechet:.1f} for as many real digits.")
    return text
