"""Benchmark (issue 23): the bundled model read by issue 23's geometry rules beside the old analyzer.

Generates images through the engine at the model's defaults (what `difflab generate PROMPT --seed S` draws: the
preset's steps, guidance, sampler and guidance interval) from prompt sets and seeds the model was never tuned on:

- full captions: `evaluation_prompts(--full, seed=--prompt-seed)` (every shape x colour pair, background,
  position and size drawn from that seed; training evaluated seed 0, the guidance interval was chosen on seeds 0,
  1, 7 and 50), image j seeded ``--image-seed + j``;
- short captions, both sizes: "a small red circle" and "a large red circle" for every pair, and the unsized "a red
  circle" twice, seeded ``2 * --image-seed + j``.

Each image is read by both analyzers: difflab.eval.adherence (the harmonic analyzer the model card's numbers come
from) and difflab.eval.shape_geometry (issue 23's rules on the largest contour). Reported per analyzer: shape and
colour right on large and on small shapes (the prompt's size, or the geometry analyzer's measured size where the
prompt has none), colour alone, shape alone, and shape+colour per shape. Also the VAE's ceiling: renders through
encode -> decode, read by both.

    .venv/bin/python bench/tiny_shapes_geometry.py --model tiny-shapes --out bench/results
    .venv/bin/python bench/tiny_shapes_geometry.py --model /work/runs/shapes-f2/pipeline --name f2 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

BATCH = 16  # requests drawn in one pipeline call (engine.pipeline.run_merged: each seeded as if alone)
ROUNDTRIP_PER_CELL = 24
DISAGREEMENTS_SHOWN = 40


def prompt_sets(full: int, prompt_seed: int, image_seed: int) -> dict[str, list[tuple[str, int]]]:
    """Set name -> (prompt, image seed) pairs."""
    from difflab.data.shapes import BASE_SHAPES, COLORS
    from difflab.train.t2i import evaluation_prompts

    full_prompts = evaluation_prompts(full, seed=prompt_seed)
    pairs = [(color, shape) for shape in BASE_SHAPES for color in COLORS]
    short = [f"a {size} {color} {shape}" for size in ("small", "large") for color, shape in pairs]
    short += [f"a {color} {shape}" for _ in range(2) for color, shape in pairs]
    return {"full captions": [(p, image_seed + j) for j, p in enumerate(full_prompts)],
            "short captions": [(p, 2 * image_seed + j) for j, p in enumerate(short)]}


def generate(model: str, items: Sequence[tuple[str, int]], cache: Any,
             overrides: dict[str, Any] | None = None) -> tuple[list[Any], float]:
    """One image per (prompt, seed) at the model's defaults (or with ``overrides``, request fields such as steps,
    guidance or sampler: a sampling choice measured before it becomes a default); the images and the seconds
    spent drawing them."""
    from difflab.engine.pipeline import run_merged
    from difflab.engine.request import build_request

    images, started = [], time.perf_counter()
    for start in range(0, len(items), BATCH):
        requests = [build_request(**{**(overrides or {}), "prompt": p, "model": model, "n": 1, "seed": s}) for p, s in items[start:start + BATCH]]
        images += [result.images[0] for result in run_merged(requests, cache)]
        print(f"  {len(images)}/{len(items)} images", file=sys.stderr, flush=True)
    return images, time.perf_counter() - started


def verdicts(images: Sequence[Any], prompts: Sequence[str]) -> dict[str, Any]:
    """Both analyzers' per-image verdicts, and the grouping (size, asked shape) they are reported by."""
    from difflab.data.shapes import parse_prompt
    from difflab.eval.adherence import read_image
    from difflab.eval.shape_geometry import score_geometry

    geometry = score_geometry(images, prompts)
    old = [read_image(image) for image in images]
    asked = [parse_prompt(p) for p in prompts]
    return {
        "geometry": {"shape": geometry.shape_right(), "color": geometry.color_right()},
        "adherence": {"shape": [r.shape == a.shape for r, a in zip(old, asked)],
                      "color": [r.color == a.color for r, a in zip(old, asked)]},
        "size": list(geometry.sizes), "asked": [a.shape for a in asked],
        "readings": list(geometry.readings), "old_readings": old,
    }


def summarise(v: dict[str, Any], analyzer: str) -> dict[str, Any]:
    from difflab.data.shapes import BASE_SHAPES

    shape, color = v[analyzer]["shape"], v[analyzer]["color"]
    both = [s and c for s, c in zip(shape, color)]

    def rate(values, keep=None):
        chosen = [x for x, k in zip(values, keep or [True] * len(values)) if k]
        return sum(chosen) / len(chosen) if chosen else None

    return {"n": len(both), "shape+color large": rate(both, [s == "large" for s in v["size"]]),
            "shape+color small": rate(both, [s == "small" for s in v["size"]]), "color": rate(color),
            "shape": rate(shape), "shape+color": rate(both),
            "per shape": {name: rate(both, [a == name for a in v["asked"]]) for name in BASE_SHAPES}}


def merge_verdicts(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"geometry": {"shape": [], "color": []}, "adherence": {"shape": [], "color": []}}
    for part in parts:
        for analyzer in ("geometry", "adherence"):
            for key in ("shape", "color"):
                merged[analyzer][key] += part[analyzer][key]
        for key in ("size", "asked", "readings", "old_readings"):
            merged.setdefault(key, []).extend(part[key])
    return merged


def roundtrip(model_folder: Path) -> dict[str, dict[str, float]]:
    """Renders of every base shape and size through the model's VAE (posterior mean), read by both analyzers."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from difflab.data.shapes import BASE_SHAPES, SIZES, image_to_tensor, random_spec, render
    from difflab.eval.adherence import read_image
    from difflab.eval.shape_geometry import read_geometry

    vae = AutoencoderKL.from_pretrained(str(model_folder / "vae")).eval()
    rng = np.random.default_rng(23)
    cells = {f"{shape} {size}": [0, 0, 0] for shape in BASE_SHAPES for size in SIZES}  # geometry, old, rendered
    with torch.no_grad():
        while any(c[2] < ROUNDTRIP_PER_CELL for c in cells.values()):
            spec = random_spec(rng)
            cell = cells[f"{spec.shape} {spec.size}"]
            if cell[2] >= ROUNDTRIP_PER_CELL:
                continue
            x = image_to_tensor(render(spec, rng))[None]
            decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
            cell[0] += read_geometry(decoded).passes(spec.shape)
            cell[1] += read_image(decoded).shape == spec.shape
            cell[2] += 1
    return {name: {"geometry": g / n, "adherence": o / n} for name, (g, o, n) in cells.items()}


def disagreement_grid(images: Sequence[Any], prompts: Sequence[str], v: dict[str, Any]):
    """Labelled tiles of the images whose shape verdict differs between the analyzers, or None if none does."""
    import itertools

    from PIL import Image, ImageDraw

    from difflab.data.shapes import BASE_SHAPES
    from difflab.viz.grid import make_grid

    rows = [i for i, (g, o) in enumerate(zip(v["geometry"]["shape"], v["adherence"]["shape"])) if g != o]
    if not rows:
        return None, 0
    # The rarer direction first (the geometry rules right, the old analyzer wrong), then the old analyzer's passes
    # that the rules fail, taking the asked shapes in turn so that each shape's failures are shown.
    new_right = [i for i in rows if v["geometry"]["shape"][i]]
    by_shape = [[i for i in rows if not v["geometry"]["shape"][i] and v["asked"][i] == name] for name in BASE_SHAPES]
    ordered = new_right + [i for group in itertools.zip_longest(*by_shape) for i in group if i is not None]
    tiles = []
    for i in ordered[:DISAGREEMENTS_SHOWN]:
        reading, old = v["readings"][i], v["old_readings"][i]
        tile = Image.new("RGB", (128, 128 + 44), (255, 255, 255))
        tile.paste(images[i].convert("RGB").resize((128, 128), Image.NEAREST), (0, 0))
        draw = ImageDraw.Draw(tile)
        lines = [f"asked {v['asked'][i]} ({v['size'][i]})", f"old: {old.shape}  new: {reading.shape}",
                 f"sol {reading.solidity:.2f} fill {reading.fill:.2f}", f"v{reading.vertices} tips {reading.tips}"]
        for k, line in enumerate(lines):
            draw.text((2, 129 + 10 * k), line, fill=(0, 0, 0))
        tiles.append(tile)
    return make_grid(tiles, columns=8, padding=4), len(rows)


def timing(models: Sequence[str], cache: Any, rounds: int = 5) -> dict[str, float]:
    """Median seconds of one `difflab generate`-style image (one request, n=1, defaults) per model, the models
    taking turns so that a shared machine's load falls on each alike."""
    import statistics

    from difflab.engine.pipeline import run
    from difflab.engine.request import build_request

    seconds: dict[str, list[float]] = {model: [] for model in models}
    for model in models:  # warm: weights loaded, first-call costs paid
        run(build_request(prompt="a red circle on a blue background", model=model, n=1, seed=0), cache)
    for k in range(rounds):
        for model in models:
            started = time.perf_counter()
            run(build_request(prompt="a red circle on a blue background", model=model, n=1, seed=k), cache)
            seconds[model].append(time.perf_counter() - started)
    return {model: statistics.median(values) for model, values in seconds.items()}


def previous(args, key: str) -> float:
    """What a re-read run keeps from the run that drew the images (drawing time, load)."""
    path = args.out / f"{args.name}.json"
    return json.loads(path.read_text())[key] if path.is_file() else 0.0


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(name: str, model: str, results: dict[str, Any]) -> str:
    from difflab.data.shapes import BASE_SHAPES

    overrides = results.get("settings", {}).get("request") or {}
    changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "the model's defaults"
    lines = [f"### {name}: `{model}`, {changed}", "",
             "| prompts | analyzer | images | shape+colour large | shape+colour small | colour | shape | "
             + " | ".join(BASE_SHAPES) + " |", "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(BASE_SHAPES)]
    for set_name, by_analyzer in results["sets"].items():
        for analyzer, label in (("geometry", "geometry (issue 23)"), ("adherence", "harmonics (old)")):
            s = by_analyzer[analyzer]
            lines.append(f"| {set_name} | {label} | {s['n']} | {pct(s['shape+color large'])} | "
                         f"{pct(s['shape+color small'])} | {pct(s['color'])} | {pct(s['shape'])} | "
                         + " | ".join(pct(s["per shape"][shape]) for shape in BASE_SHAPES) + " |")
    lines += ["", f"Images the analyzers disagree on (shape verdict): {results['disagreements']} of "
              f"{results['sets']['all']['geometry']['n']}: {results['old_only']} pass the old analyzer and fail the "
              f"rules, {results['new_only']} the other way. "
              f"Drawing: {results['seconds_per_image']:.2f} s an image in batches of {BATCH} on a shared machine "
              f"(load average {results['load']:.1f}).", ""]
    if results.get("timing"):
        times = results["timing"]
        reference = times[results["time_against"]]
        lines += ["Generation time, one 64x64 image at the defaults (median of turns taken with the reference): "
                  + ", ".join(f"`{m}` {t:.2f} s ({t / reference:.2f}x)" for m, t in times.items()), ""]
    if results.get("roundtrip"):
        lines += ["The VAE's ceiling: renders encoded and decoded (posterior mean), "
                  f"{ROUNDTRIP_PER_CELL} per cell, the share that passes each analyzer:", "",
                  "| shape size | geometry | harmonics (old) |", "|---|---:|---:|"]
        lines += [f"| {cell} | {pct(r['geometry'])} | {pct(r['adherence'])} |"
                  for cell, r in results["roundtrip"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes", help="preset or diffusers folder")
    parser.add_argument("--name", default="baseline", help="names the files written under --out")
    parser.add_argument("--out", type=Path, default=Path("outputs/tiny-shapes-geometry"))
    parser.add_argument("--full", type=int, default=128, help="full-caption prompts (a multiple of 32)")
    parser.add_argument("--prompt-seed", type=int, default=2026)
    parser.add_argument("--image-seed", type=int, default=100_000)
    parser.add_argument("--no-roundtrip", action="store_true", help="skip the VAE round trip")
    parser.add_argument("--reread", action="store_true", help="read the images a previous run saved under "
                        "OUT/NAME-images instead of drawing them again (after an analyzer change)")
    parser.add_argument("--time-against", default=None, help="also time one image against this model (the "
                        "issue's limit: within 2x of the shipped model's time)")
    parser.add_argument("--request", action="append", default=[], metavar="FIELD=VALUE",
                        help="a request field instead of the model's default (repeatable; JSON values: steps=50, "
                        "guidance=5, sampler=\"euler\"): sampling choices measured before they become defaults")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.request:
        field, _, value = item.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value  # a bare word: a string
    if args.full < 32 or args.full % 32:
        parser.error(f"--full must be a positive multiple of 32; got {args.full}")

    import os

    from PIL import Image

    from difflab.io.atomic import atomic_write_bytes
    from difflab.engine.pipeline import PipelineCache
    from difflab.engine.registry import resolve_model
    from difflab.viz.grid import png_bytes

    model_folder = Path(resolve_model(args.model).path)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = PipelineCache()
    sets, parts, all_images, all_prompts, seconds = {}, [], [], [], 0.0
    for set_name, items in prompt_sets(args.full, args.prompt_seed, args.image_seed).items():
        print(f"{set_name}: {len(items)} images", file=sys.stderr)
        folder = args.out / f"{args.name}-images" / set_name.replace(" ", "-")
        if args.reread:
            images, spent = [Image.open(folder / f"{j:03d}.png").convert("RGB") for j in range(len(items))], 0.0
        else:
            images, spent = generate(args.model, items, cache, overrides)
            folder.mkdir(parents=True, exist_ok=True)
            for j, image in enumerate(images):
                atomic_write_bytes(folder / f"{j:03d}.png", png_bytes(image))
        prompts = [p for p, _ in items]
        v = verdicts(images, prompts)
        sets[set_name] = {a: summarise(v, a) for a in ("geometry", "adherence")}
        parts.append(v)
        all_images += images
        all_prompts += prompts
        seconds += spent
    v = merge_verdicts(parts)
    sets["all"] = {a: summarise(v, a) for a in ("geometry", "adherence")}
    grid, disagreements = disagreement_grid(all_images, all_prompts, v)
    old_only = sum(o and not g for g, o in zip(v["geometry"]["shape"], v["adherence"]["shape"]))
    results = {"model": args.model, "sets": sets, "disagreements": disagreements, "old_only": old_only,
               "new_only": disagreements - old_only,
               "seconds_per_image": seconds / len(all_images) if seconds else previous(args, "seconds_per_image"),
               "load": previous(args, "load") if args.reread else os.getloadavg()[0],
               "roundtrip": None if args.no_roundtrip else roundtrip(model_folder),
               "time_against": args.time_against,
               "timing": timing([args.model, args.time_against], cache) if args.time_against else None,
               "settings": {"full": args.full, "prompt_seed": args.prompt_seed, "image_seed": args.image_seed,
                            "request": overrides},
               "per_image": [{"prompt": p, "geometry": g, "adherence": o, "size": s, **vars(r)} for p, g, o, s, r in
                             zip(all_prompts, v["geometry"]["shape"], v["adherence"]["shape"], v["size"],
                                 v["readings"])]}
    atomic_write_bytes(args.out / f"{args.name}.json", (json.dumps(results, indent=1) + "\n").encode())
    text = markdown(args.name, args.model, results)
    atomic_write_bytes(args.out / f"{args.name}.md", text.encode())
    if grid is not None:
        atomic_write_bytes(args.out / f"{args.name}-disagreements.png", png_bytes(grid, optimize=True))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
