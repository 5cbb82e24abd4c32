"""``difflab explain clip-skip``: A1111's "Clip skip", measured on the model: the same prompts and seeds with the
prompt read from earlier layers of the text encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from difflab.explain.common import Context, compare, percent, pipeline, save, wrap

PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star")
SEEDS = 2
MOST = 3  # clip skip 1..3; fewer when the text encoder has fewer layers


@dataclass(frozen=True)
class ClipSkipRow:
    clip_skip: int
    similarity: float  # mean cosine similarity of the prompt's token embeddings to clip skip 1's
    pixel_change: float  # mean RMS distance (0..1) of each image to the same prompt and seed at clip skip 1
    shape_and_color: float  # share of images read back with the asked shape and colour


def run(ctx: Context) -> Iterator[str]:
    import torch

    from difflab.engine.pipeline import PipelineCache
    from difflab.engine.prompt_weighting import encode_sd
    from difflab.eval.adherence import score
    from difflab.viz.sweep_plot import sweep_plot

    cache = PipelineCache()
    model, loaded = pipeline(ctx, cache)
    if model.family != "sd":
        raise ValueError(f"topic clip-skip runs on a Stable Diffusion 1.x model; {ctx.model!r} is {model.family}")
    layers = loaded.text_encoder.config.num_hidden_layers
    skips = list(range(1, min(MOST, layers) + 1))
    yield from wrap("The text encoder (CLIP) reads the prompt through a stack of transformer layers; the U-Net "
                    "normally sees the last layer's output. Clip skip N (A1111's setting, `--clip-skip N`) hands it "
                    "the output of N - 1 layers earlier instead (through the final layer norm): an earlier, less "
                    "processed reading of the prompt. Models trained on clip skip 2 (many anime models, after "
                    f"NovelAI) want 2; models trained on the last layer, like {ctx.model}, were never shown the "
                    "earlier ones.")
    yield (f"{ctx.model}'s text encoder has {layers} layers. The same {len(PROMPTS)} prompts x {SEEDS} seeds at clip "
           f"skip {', '.join(map(str, skips))}:")
    with torch.inference_mode():
        embeddings = {n: [encode_sd(loaded, p, "", clip_skip=n)["prompt_embeds"][0] for p in PROMPTS] for n in skips}
    drawn = sweep_plot({"model": ctx.model}, "clip-skip", skips, PROMPTS, seeds=SEEDS, seed=ctx.seed,
                       cache=cache)
    asked = [p for p in PROMPTS for _ in range(SEEDS)]
    reference = drawn.row(0)
    rows = []
    for index, n in enumerate(skips):
        images = drawn.row(index)
        similarity = float(np.mean([torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
                                    for a, b in zip(embeddings[n], embeddings[1])]))
        change = float(np.mean([_rms(a, b) for a, b in zip(images, reference)]))
        rows.append(ClipSkipRow(n, similarity, change, score(images, asked).shape_and_color_accuracy or 0.0))
    yield from table(rows).splitlines()
    yield from wrap(sentences(rows, len(asked)))
    yield (f"figure (rows: clip skip {', '.join(map(str, skips))}; columns: seeds {ctx.seed}.."
           f"{ctx.seed + SEEDS - 1} of each prompt, the same in every row):")
    yield str(save(drawn.grid(), ctx, "clip-skip.png"))


def _rms(a, b) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255
    y = np.asarray(b.convert("RGB"), dtype=np.float64) / 255
    return float(np.sqrt(np.mean((x - y) ** 2)))


def table(rows: Sequence[ClipSkipRow]) -> str:
    lines = [f"{'clip skip':>9} {'embedding vs skip 1 (cosine)':>29} {'image change (RMS)':>19} {'shape+color':>12}",
             "-" * 72]
    lines += [f"{r.clip_skip:>9} {r.similarity:>29.3f} {r.pixel_change:>19.3f} {percent(r.shape_and_color):>12}"
              for r in rows]
    return "\n".join(lines)


def sentences(rows: Sequence[ClipSkipRow], images_per_row: int) -> str:
    """What skipping did on this model, from the rows: how far the embedding and the images moved, and adherence."""
    first, last = rows[0], rows[-1]
    if len(rows) == 1:
        return "This text encoder has one layer: there is nothing to skip."
    text = (f"At clip skip {last.clip_skip} the prompt's embedding keeps a cosine similarity of {last.similarity:.3f} "
            f"to the last layer's, and the same seeds give images {last.pixel_change:.3f} apart (RMS, 0..1). ")
    steady = all(b.pixel_change >= a.pixel_change for a, b in zip(rows, rows[1:]))
    text += ("Each layer skipped moves the images further. " if steady else
             "The images do not move further with every layer skipped. ")
    word = compare(last.shape_and_color, first.shape_and_color, higher="rises", lower="falls", same="stays")
    text += (f"Shape and colour right {word} from {percent(first.shape_and_color)} at clip skip 1 to "
             f"{percent(last.shape_and_color)} at {last.clip_skip} ({images_per_row} images a row). ")
    if last.shape_and_color < first.shape_and_color:
        text += "A model trained on the last layer reads the prompt best from the last layer: keep clip skip 1."
    return text
