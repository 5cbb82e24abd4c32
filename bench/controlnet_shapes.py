"""Benchmark (issue 5): a canny ControlNet for the bundled model, and how closely its images follow the edges.

1. ``train_controlnet`` on the base model (ControlNetModel.from_unet of its U-Net, canny maps of procedural
   shapes); resumes when --out already holds a run.
2. Edge adherence (difflab.eval.edges): F1 of the canny edges of each generated 64x64 image against its control
   edges, distance tolerance --tolerance px, over a fixed set of held-out outlines. Prompts name colour, shape,
   size and background but not the position, so only the control tells the model where the outline is:
   - base model, same prompts, seeds and guidance on every step, no ControlNet (the baseline, measured in the same
     run): target <= 0.25; also with the preset's guidance interval, as `difflab generate` draws without a control
   - with the ControlNet at scale 1: target >= 0.6
   Everything goes through the engine (GenerationRequest -> engine.pipeline.run), as `difflab generate` does.
3. Grids: the same outline under different prompts (colours, shapes), and a conditioning-scale sweep with the
   F1 of every scale.
4. results.json and a markdown table in --out; --ship copies the ControlNet beside the bundled model with a card.

    .venv/bin/python bench/controlnet_shapes.py                                  # bundled model, issue settings
    .venv/bin/python bench/controlnet_shapes.py --base PATH --steps 4 --outlines 4 --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
# one outline drawn under prompts that change colour, background and even the named shape
GRID_PROMPTS = ("a red circle on white", "a blue square on yellow", "a green star on black",
                "a yellow triangle on purple", "a white circle on blue", "an orange star on green")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-shapes", help="base model (preset or diffusers folder)")
    parser.add_argument("--out", type=Path, default=Path("runs/controlnet-shapes"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--num-images", type=int, default=4000)
    parser.add_argument("--outlines", type=int, default=100, help="held-out outlines per measurement")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--tolerance", type=float, default=2.0, help="edge F1 distance tolerance, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ship", action="store_true", help="copy the ControlNet to src/difflab/models/ with a card")
    parser.add_argument("--quick", action="store_true", help="smoke run: no verdict against the issue's targets")
    args = parser.parse_args(argv)

    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.data.shapes import ShapesDataset, caption, render
    from difflab.engine.control import canny
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.registry import resolve_model
    from difflab.engine.request import build_request
    from difflab.eval.edges import image_edge_f1, mean_f1
    from difflab.train.controlnet import CONTROLNET_DIR, STATE_NAME, train_controlnet
    from difflab.train.controlnet_config import ControlNetTrainConfig
    from difflab.viz.grid import make_grid, png_bytes

    out = args.out
    train_dir = out / "train"
    # 1. train
    config = ControlNetTrainConfig(base=args.base, num_images=args.num_images, learning_rate=args.lr,
                                   steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                   warmup_steps=min(50, args.steps // 10), checkpoint_every=max(1, args.steps // 10),
                                   validation_steps=args.sample_steps)
    for event in train_controlnet(config, train_dir, resume=(train_dir / STATE_NAME).is_file()):
        if event.step % max(1, args.steps // 20) == 0 or event.step == event.total:
            print(f"step {event.step}/{event.total} loss {event.loss:.4f} {event.seconds:.0f}s", file=sys.stderr)
    record = json.loads((train_dir / "training.json").read_text())
    controlnet = train_dir / CONTROLNET_DIR
    side = record["resolution"]  # the base model's own image size (64 for tiny-shapes)

    # 2. the evaluation set: held-out outlines (a shapes-world seed neither the base nor the ControlNet saw)
    maps_dir = out / "maps"
    dataset = ShapesDataset(args.outlines, seed=20_000 + args.seed)
    outlines = []
    for index in range(args.outlines):
        spec, _, rng = dataset.spec_and_caption(index)
        control_map = canny(render(spec, rng, side))
        path = maps_dir / f"{index:04d}.png"
        atomic_write_bytes(path, png_bytes(control_map))
        outlines.append((path, control_map, caption(spec, rng, template="no_position")))

    cache = PipelineCache()

    def draw(prompt: str, seed: int, map_path: Path | None = None, scale: float = 1.0, guidance_end: float = 1.0):
        # guidance on every step by default: ControlNet requests cannot take a guidance interval, so the baseline
        # differs from them in the ControlNet alone; the preset's interval is measured as a row of its own
        controls = [] if map_path is None else [{"kind": "none", "image": str(map_path), "scale": scale,
                                                 "model": str(controlnet)}]
        request = build_request(prompt=prompt, model=args.base, steps=args.sample_steps, guidance=args.guidance,
                                seed=seed, width=side, height=side, controls=controls, guidance_end=guidance_end)
        return run(request, cache).images[0]

    def f1_of(images) -> float:
        return mean_f1([image_edge_f1(image, m, args.tolerance) for image, (_, m, _) in zip(images, outlines)])

    started = time.perf_counter()
    base_images = [draw(prompt, args.seed + i) for i, (_, _, prompt) in enumerate(outlines)]
    interval_end = resolve_model(args.base).guidance_end
    interval_images = ([draw(prompt, args.seed + i, guidance_end=interval_end) for i, (_, _, prompt)
                        in enumerate(outlines)] if interval_end < 1 else [])
    sweep = {scale: [draw(prompt, args.seed + i, path, scale) for i, (path, _, prompt) in enumerate(outlines)]
             for scale in SCALES}
    f1 = {"without ControlNet": f1_of(base_images),
          **({f"without ControlNet, the preset's guidance interval ({interval_end:g})": f1_of(interval_images)}
             if interval_images else {}),
          **{f"ControlNet scale {s:g}": f1_of(sweep[s]) for s in SCALES}}
    measure_seconds = time.perf_counter() - started

    # 3. grids
    rows = []
    for path, control_map, _ in outlines[:3]:
        rows += [control_map] + [draw(prompt, args.seed, path) for prompt in GRID_PROMPTS]
    atomic_write_bytes(out / "same-outline.png", png_bytes(make_grid(rows, columns=1 + len(GRID_PROMPTS), scale=3,
                                                                     labels=["control", *GRID_PROMPTS])))
    rows = []
    for i, (_, control_map, _) in enumerate(outlines[:4]):
        rows += [control_map] + [sweep[scale][i] for scale in SCALES]
    labels = ["control"] + [f"{s:g}: F1 {f1[f'ControlNet scale {s:g}']:.2f}" for s in SCALES]
    atomic_write_bytes(out / "scale-sweep.png", png_bytes(make_grid(rows, columns=1 + len(SCALES), scale=3,
                                                                    labels=labels)))

    # 4. results
    with_controlnet, without = f1["ControlNet scale 1"], f1["without ControlNet"]
    results = {
        "base": args.base, "outlines": args.outlines, "tolerance_px": args.tolerance, "sample_steps": args.sample_steps,
        "guidance": args.guidance, "edge_f1": f1, "train_seconds": record["seconds"], "train_steps": record["steps_done"],
        "final_loss": record["final_loss"], "measure_seconds": round(measure_seconds, 1),
        "targets": {"with >= 0.6": with_controlnet >= 0.6, "without <= 0.25": without <= 0.25},
    }
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    table = ["| setting | mean edge F1 |", "|---|---|"] + [f"| {name} | {value:.3f} |" for name, value in f1.items()]
    text = (f"Edge F1 (canny of output vs control edges, tolerance {args.tolerance:g} px), {args.outlines} held-out "
            f"outlines, {args.sample_steps} steps, CFG {args.guidance:g}; ControlNet trained {record['steps_done']} "
            f"steps in {record['seconds']:.0f}s\n\n" + "\n".join(table) + "\n")
    atomic_write_bytes(out / "results.md", text.encode())
    print(text)
    if args.ship:
        ship(controlnet, record, results)
    if args.quick:
        return 0
    ok = with_controlnet >= 0.6 and without <= 0.25
    print("targets met" if ok else "targets NOT met", file=sys.stderr)
    return 0 if ok else 1


def ship(controlnet: Path, record: dict, results: dict) -> Path:
    """Copy the ControlNet folder beside the bundled model, with a model card of how it was made and measured."""
    from difflab.engine.registry import BUNDLED_DIR

    target = BUNDLED_DIR / "tiny-shapes-controlnet-canny"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(controlnet, target)
    f1 = results["edge_f1"]
    card = f"""# tiny-shapes-controlnet-canny

A canny ControlNet for difflab's bundled `tiny-shapes` model: `ControlNetModel.from_unet` of its U-Net, trained by
`difflab train controlnet` on canny maps (thresholds {record['config']['low']}/{record['config']['high']}) of
{record['config']['num_images']} procedural shapes, half of the captions dropped. {record['steps_done']} steps,
batch {record['config']['batch_size']}, peak learning rate {record['config']['learning_rate']:g},
{record['seconds'] / 60:.0f} minutes on CPU; final loss {record['final_loss']:.4f}.

Use: `difflab generate "a red star on blue" --control canny:outline.png` (the registry picks this ControlNet for
tiny-shapes).

Edge adherence (bench/controlnet_shapes.py): F1 of the canny edges of the output against the control edges,
tolerance {results['tolerance_px']:g} px, {results['outlines']} held-out outlines, prompts without positions:

| setting | mean edge F1 |
|---|---|
""" + "".join(f"| {name} | {value:.3f} |\n" for name, value in f1.items())
    (target / "README.md").write_text(card)
    return target


if __name__ == "__main__":
    sys.exit(main())
