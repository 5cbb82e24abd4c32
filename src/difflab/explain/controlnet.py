"""``difflab explain controlnet``: steering the layout with a map, run on the model's bundled canny ControlNet."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

from difflab.explain.common import Context, save, wrap

# other colours than the picture's: the layout comes from the map, the colours from the prompt
PROMPT = "a red star on white"
SCALES = (0.0, 1.0)  # without control (the ControlNet adds nothing) and as trained
SEEDS = 3


def run(ctx: Context) -> Iterator[str]:
    from difflab.data.shapes import ShapeSpec, render
    from difflab.engine.registry import resolve_model
    from difflab.io.atomic import atomic_write_bytes
    from difflab.viz.control_scale import control_scale_sweep, side_by_side
    from difflab.viz.grid import make_grid, png_bytes

    model = resolve_model(ctx.model)
    picture = render(ShapeSpec("star", "orange", "blue", "left", "large"), resolution=model.width)
    picture_path = ctx.out / "controlnet-picture.png"
    atomic_write_bytes(picture_path, png_bytes(picture))
    yield "A ControlNet is a trainable copy of the U-Net's encoder that reads a map (edges, depth, a pose) and"
    yield "adds its features to the frozen U-Net's skip connections through zero-initialised convolutions, so the"
    yield "layout comes from the map and the rest from the prompt. The canny preprocessor turns a picture into"
    yield "the map; the conditioning scale multiplies what the ControlNet adds (0 = nothing: the plain model;"
    yield "1 = as trained). `difflab generate --control canny:IMAGE:SCALE` uses it."
    yield from wrap(f"Here: an orange star at the left, its canny map, and {PROMPT!r} on {ctx.model} with its "
                    f"canny ControlNet, seeds {ctx.seed}..{ctx.seed + SEEDS - 1}, without and with control. Edge F1: "
                    "the canny edges of each image against the map (2 px tolerance; 1 = every edge where the map "
                    "has one, and none elsewhere):")
    sweep = control_scale_sweep(ctx.model, str(picture_path), PROMPT, SCALES, seeds=SEEDS, seed=ctx.seed)
    yield from sweep.table().splitlines()
    yield from wrap(sentences(sweep.scales, sweep.f1))
    inputs = make_grid([picture, sweep.control_map.convert("RGB")], columns=1, scale=2,
                       row_labels=["picture", "canny map"], labels=["input"])
    figure = side_by_side(inputs, sweep.plot.grid())
    yield "figure (left: the picture and its canny map; right: rows ControlNet weight 0 = without control and"
    yield "1 = with control, columns the seeds):"
    yield str(save(figure, ctx, "controlnet.png"))


def check(model_name: str) -> None:
    """The model's canny ControlNet exists (explain() calls this before anything is written)."""
    from difflab.engine.control_models import resolve_controlnet
    from difflab.engine.registry import resolve_model

    resolve_controlnet(None, "canny", resolve_model(model_name), "its canny ControlNet")


def sentences(scales: Sequence[float], f1: Sequence[Optional[float]]) -> str:
    """Without against with control, from the measured edge F1 of each scale."""
    without = next(value for scale, value in zip(scales, f1) if scale == 0)
    with_ = next(value for scale, value in zip(scales, f1) if scale == 1)
    if with_ > without:
        return (f"With control the images follow the map's outline: edge F1 {with_:.3f} against {without:.3f} "
                f"without, where the star lands wherever the seed puts it ({with_ / max(without, 1e-9):.1f}x). "
                "When a ControlNet seems ignored, raise the scale; when the image looks traced and stiff, lower it.")
    return (f"Here control did not help: edge F1 {with_:.3f} with it against {without:.3f} without. A ControlNet "
            "trained on other maps, or a map the model cannot draw, shows up like this.")
