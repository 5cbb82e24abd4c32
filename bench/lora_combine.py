"""Benchmark (issue 4): two LoRAs on the bundled model, the hexagon shape and a colour style, combined with weights.

1. The style LoRA: ``--style-images`` shapes-world renders in the "shifted" colour style (difflab.data.palette_shift:
   every colour one step around the colour wheel, white <-> black; captions name the unshifted colours after the
   trigger, "shifted, a red circle ..." over an orange circle), of the base shapes only, so a shifted *hexagon*
   needs both LoRAs. Trained with bench/lora_hexagon.py's recipe (its ``lora_config``), resumed when the run
   folder exists.
2. The hexagon LoRA: ``--hexagon-lora PATH``, or trained exactly as bench/lora_hexagon.py trains it.
3. A grid over weights, rows = hexagon LoRA weight, columns = style LoRA weight: every cell draws the same
   hexagon prompts with the style trigger ("shifted, a large red hexagon ...") and the same seeds, through the
   engine (GenerationRequest with ``loras=["PATH:WEIGHT", ...]`` -> engine.pipeline.run, one PipelineCache). Per
   cell: hexagon share (the adherence analyzer reads shape == "hexagon") and the style score (share of colour
   fields read as the prompt's colours shifted, difflab.eval.palette_shift), beside the share read as asked.
4. A markdown table (printed, results.md), results.json and grid.png in ``--out``.

    .venv/bin/python bench/lora_combine.py                                  # bundled model, issue settings
    .venv/bin/python bench/lora_combine.py --hexagon-lora runs/lora-hexagon/lora   # reuse a trained hexagon LoRA
    .venv/bin/python bench/lora_combine.py --base PATH --steps 4 --seeds 1 --quick  # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

QUICK = {"images": 4, "style_images": 4, "prompts": 1, "sample_steps": 4}  # --quick: what is not given
DEFAULTS = {"images": 20, "style_images": 30, "prompts": 4, "sample_steps": 20}
SHOWN_PER_CELL = 4  # images of a cell in the grid (all of them are measured)


def _weights(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0,0.5,1; got {text!r}") from None
    if not weights:
        raise argparse.ArgumentTypeError("expected at least one weight")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-shapes", help="base model (preset or diffusers folder)")
    parser.add_argument("--out", type=Path, default=Path("runs/lora-combine"))
    parser.add_argument("--hexagon-lora", type=Path, default=None,
                        help="a trained hexagon LoRA (folder or .safetensors); default: train it into OUT/hexagon")
    parser.add_argument("--images", type=int, default=None, help="hexagon training images [20; quick 4]")
    parser.add_argument("--style-images", type=int, default=None, help="style training images [30; quick 4]")
    parser.add_argument("--steps", type=int, default=800, help="training steps of each LoRA")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-encoder-lora", action="store_true")
    parser.add_argument("--network", default="locon", help="U-Net layers adapted: attention, transformer, locon")
    parser.add_argument("--hexagon-weights", type=_weights, default=(0.0, 0.5, 1.0), help="grid rows, e.g. 0,0.5,1")
    parser.add_argument("--style-weights", type=_weights, default=(0.0, 0.5, 1.0), help="grid columns")
    parser.add_argument("--prompts", type=int, default=None, help="hexagon prompts per cell [2; quick 1]")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt per cell")
    parser.add_argument("--sample-steps", type=int, default=None, help="sampling steps [20; quick 4]")
    parser.add_argument("--scheduler", default="DPM++ 2M", help="A1111 sampler name (the bundled model's default)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer images, prompts and sampling steps")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ scripts import each other
    from lora_hexagon import lora_config, train, train_hexagon

    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.data.palette_shift import SHIFT_TRIGGER, write_shifted_set
    from difflab.engine.lora import resolve_lora
    from difflab.train.t2i import evaluation_prompts
    from difflab.viz.grid import png_bytes

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.hexagon_lora is not None:
        resolve_lora(str(args.hexagon_lora.resolve()))  # a missing or unreadable file fails now, not after training

    # 1. the style LoRA (its folder's name is its adapter name: it must differ from the hexagon LoRA's)
    style_data, style_lora = out / "shifted-data", out / "shifted-lora"
    if not style_data.is_dir():
        write_shifted_set(style_data, args.style_images, seed=args.seed)
    style_record = train(lora_config(args, style_data, SHIFT_TRIGGER), style_lora)

    # 2. the hexagon LoRA: given, or trained as bench/lora_hexagon.py does
    if args.hexagon_lora is not None:
        hexagon_lora = args.hexagon_lora
        record_path = (hexagon_lora if hexagon_lora.is_dir() else hexagon_lora.parent) / "training.json"
        hexagon_record = json.loads(record_path.read_text()) if record_path.is_file() else None
    else:
        hexagon_record = train_hexagon(args, out / "hexagon")
        hexagon_lora = out / "hexagon" / "lora"
    hexagon_name = resolve_lora(str(hexagon_lora.resolve())).name
    style_name = resolve_lora(str(style_lora.resolve())).name
    if hexagon_name == style_name:
        raise SystemExit(f"--hexagon-lora {hexagon_lora}: rename it; {style_name!r} is the style LoRA's name")

    # 3. the grid over weights, through the engine
    prompts = [f"{SHIFT_TRIGGER}, {p}" for p in evaluation_prompts(args.prompts, args.seed, shapes=("hexagon",))]
    cells = measure_grid(args, prompts, hexagon_lora.resolve(), style_lora.resolve())
    table = results_markdown(args, prompts, cells)
    print("\n" + table)

    # 4. results
    grid = weight_grid(args, cells)
    atomic_write_bytes(out / "grid.png", png_bytes(grid))
    results = {
        "cells": [{k: v for k, v in cell.items() if k != "images"} for cell in cells],
        "prompts": prompts, "seeds": [args.seed + i for i in range(args.seeds)],
        "hexagon_lora": {"path": str(hexagon_lora), "training": _summary(hexagon_record)},
        "style_lora": {"path": str(style_lora), "trigger": SHIFT_TRIGGER, "training": _summary(style_record)},
        "settings": vars(args) | {"out": str(out)},
    }
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(out / "results.md", (table + "\n").encode())
    print(f"grid: {out / 'grid.png'}\nresults: {out / 'results.json'}, {out / 'results.md'}", file=sys.stderr)
    return 0


def measure_grid(args, prompts: list[str], hexagon_lora: Path, style_lora: Path) -> list[dict]:
    """One cell per (hexagon weight, style weight): every prompt x ``args.seeds`` seeds, generated and read."""
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.eval.adherence import read_image
    from difflab.eval.palette_shift import score_shift

    cache = PipelineCache()
    cells = []
    for hexagon_weight in args.hexagon_weights:
        for style_weight in args.style_weights:
            # a weight-0 LoRA is left out rather than loaded at 0: the same images (tests/engine: weight 0 equals
            # no LoRA), without loading it
            loras = [f"{path}:{weight:g}" for path, weight in ((hexagon_lora, hexagon_weight),
                                                                 (style_lora, style_weight)) if weight != 0]
            started = time.perf_counter()
            images, image_prompts = [], []
            for prompt in prompts:
                request = build_request(prompt=prompt, model=args.base, n=args.seeds, seed=args.seed,
                                        steps=args.sample_steps, guidance=args.guidance, scheduler=args.scheduler,
                                        loras=loras)
                images += run(request, cache).images
                image_prompts += [prompt] * args.seeds
            readings = [read_image(image) for image in images]
            shift = score_shift(images, image_prompts, readings)
            cells.append({
                "hexagon_weight": hexagon_weight, "style_weight": style_weight, "loras": loras,
                "n_images": len(images),
                "hexagon_share": sum(r.shape == "hexagon" for r in readings) / len(readings),
                "style_score": shift.shifted, "as_asked_colors": shift.as_asked,
                "seconds": round(time.perf_counter() - started, 1),
                "images": images,  # prompt-major: prompt i's seeds are images[i * seeds:(i + 1) * seeds]
            })
            print(f"hexagon {hexagon_weight:g} style {style_weight:g}: hexagons {cells[-1]['hexagon_share']:.0%}, "
                  f"shifted colours {shift.shifted:.0%} ({cells[-1]['seconds']:.0f}s)", file=sys.stderr)
    return cells


def results_markdown(args, prompts: list[str], cells: list[dict]) -> str:
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = [f"Base {args.base}; each cell: {len(prompts)} prompt(s) x {args.seeds} seed(s) through the engine, "
             f"{args.sample_steps} steps of {args.scheduler}, guidance {args.guidance:g}; prompts: "
             + "; ".join(f'"{p}"' for p in prompts) + ".", "",
             "hexagons: share the adherence analyzer reads as a hexagon. shifted colours: share of the prompt's "
             "colour fields (shape colour, background) read as the colour one step round the wheel (the style); "
             "as asked: read as the prompt's own colour.", "",
             "| hexagon LoRA weight | style LoRA weight | hexagons | shifted colours | as asked | images |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['hexagon_weight']:g} | {c['style_weight']:g} | {pct(c['hexagon_share'])} | "
              f"{pct(c['style_score'])} | {pct(c['as_asked_colors'])} | {c['n_images']} |" for c in cells]
    return "\n".join(lines)


def weight_grid(args, cells: list[dict]):
    """Rows = hexagon weight, columns = style weight; a cell shows SHOWN_PER_CELL of its images, seed-major across
    prompts (seed 0 of every prompt, then seed 1, ...)."""
    from PIL import Image, ImageDraw

    from difflab.viz.grid import make_grid

    def shown(images: list) -> list:
        by_seed = [images[p * args.seeds + s] for s in range(args.seeds) for p in range(len(images) // args.seeds)]
        return by_seed[:SHOWN_PER_CELL]

    per_cell = len(shown(cells[0]["images"]))
    columns = len(args.style_weights) * per_cell
    rows = []
    for r, hexagon_weight in enumerate(args.hexagon_weights):
        row_cells = cells[r * len(args.style_weights):(r + 1) * len(args.style_weights)]
        labels = None
        if r == 0:
            labels = [f"style {c['style_weight']:g}" if i == 0 else "" for c in row_cells for i in range(per_cell)]
        rows.append(make_grid([im for c in row_cells for im in shown(c["images"])], columns=columns, scale=2,
                              labels=labels))
    margin = 72  # room for "hexagon 0.5" left of each row
    grid = Image.new("RGB", (margin + rows[0].width, sum(row.height for row in rows)), (255, 255, 255))
    draw, y = ImageDraw.Draw(grid), 0
    for hexagon_weight, row in zip(args.hexagon_weights, rows):
        grid.paste(row, (margin, y))
        draw.text((4, y + row.height // 2), f"hexagon {hexagon_weight:g}", fill=(0, 0, 0))
        y += row.height
    return grid


def _summary(record: dict | None) -> dict | None:
    if record is None:
        return None
    return {"seconds": record.get("seconds"), "steps_done": record.get("steps_done"),
            "final_loss": record.get("final_loss"), "num_images": record.get("num_images"),
            "config": record.get("config")}


if __name__ == "__main__":
    sys.exit(main())
