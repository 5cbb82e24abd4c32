"""Benchmark (issue 4): teach the held-out shape (hexagon) to the bundled model with a LoRA, and measure it.

1. 20 hexagon renders with full captions (``difflab lora make-dataset``'s helper); the trigger word is
   "hexagon" itself, a word the base model's tokenizer has but that base training never showed it.
2. ``train_lora`` on the base model (the issue's budget: <= 15 minutes on 2 CPU cores).
3. The adherence analyzer (difflab.eval.adherence) reads the shape off generated 64x64 images:
   - hexagon prompts, base model (the baseline, measured in the same run): issue target <= 10% hexagons;
   - hexagon prompts, with the LoRA: target >= 70%;
   - old-shape prompts (circle/square/triangle/star), with the LoRA: target >= 85% shape accuracy, beside the
     base model's own accuracy on the same prompts and seeds.
4. A before/after grid (row 1: base, row 2: LoRA; hexagon prompts then old-shape prompts) and results.json.

    .venv/bin/python bench/lora_hexagon.py                       # bundled tiny-shapes model, issue settings
    .venv/bin/python bench/lora_hexagon.py --base PATH --steps 4 --prompts 4 --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-shapes", help="base model (preset or diffusers folder)")
    parser.add_argument("--out", type=Path, default=Path("runs/lora-hexagon"))
    parser.add_argument("--images", type=int, default=20, help="training images (issue: at most 20)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-encoder-lora", action="store_true")
    parser.add_argument("--network", default="attention", help="U-Net layers adapted: attention, transformer, locon")
    parser.add_argument("--prior", type=int, default=0,
                        help="prior-preservation images of the old shapes, made by the base model (0 = none)")
    parser.add_argument("--prior-loss-weight", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=100, help="prompts per measurement")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: no time budget verdict")
    args = parser.parse_args(argv)

    import torch
    from diffusers import StableDiffusionPipeline

    from difflab.data.shapes import BASE_SHAPES
    from difflab.engine.lora import applied_loras, resolve_lora
    from difflab.engine.registry import resolve_model
    from difflab.train.t2i import evaluate_pipeline, evaluation_prompts

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out

    # 1. train (resumes when a finished or interrupted run is already in --out)
    record = train_hexagon(args, out)
    train_seconds = record["seconds"]

    # 2. measure: the same prompts and seeds with and without the LoRA, on one pipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(resolve_model(args.base).path))
    hexagon_prompts = evaluation_prompts(args.prompts, args.seed, shapes=("hexagon",))
    old_prompts = evaluation_prompts(args.prompts, args.seed, shapes=BASE_SHAPES)
    measure = lambda prompts: evaluate_pipeline(pipe, prompts, args.seed, args.guidance, args.sample_steps)  # noqa: E731
    base_hexagon, base_old = measure(hexagon_prompts), measure(old_prompts)
    lora = resolve_lora(str(out / "lora"))
    with applied_loras(pipe, [lora]):
        lora_hexagon, lora_old = measure(hexagon_prompts), measure(old_prompts)
    rows = {
        "hexagon prompts, base (target <= 10%)": base_hexagon.accuracy["shape"],
        "hexagon prompts, LoRA (target >= 70%)": lora_hexagon.accuracy["shape"],
        "old-shape prompts, base": base_old.accuracy["shape"],
        "old-shape prompts, LoRA (target >= 85%)": lora_old.accuracy["shape"],
    }
    print(f"\n{'measurement':<44}{'shape accuracy':>16}")
    for name, value in rows.items():
        print(f"{name:<44}{100 * value:>15.1f}%")
    print(f"{'LoRA training time (target <= 900 s)':<44}{train_seconds:>15.0f}s")
    print("\nwith the LoRA, hexagon prompts:\n" + lora_hexagon.table())

    # 3. before/after grid: base row, LoRA row
    _write_grid(pipe, lora, hexagon_prompts[:6] + old_prompts[:4], args, out / "before_after.png")
    verdict = {
        "base_hexagon_at_most_10": rows["hexagon prompts, base (target <= 10%)"] <= 0.10,
        "lora_hexagon_at_least_70": rows["hexagon prompts, LoRA (target >= 70%)"] >= 0.70,
        "lora_old_shapes_at_least_85": rows["old-shape prompts, LoRA (target >= 85%)"] >= 0.85,
        "trained_within_15_minutes": None if args.quick else train_seconds <= 900,
    }
    results = {"rows": rows, "train_seconds": train_seconds, "prompts": args.prompts, "verdict": verdict,
               "settings": vars(args) | {"out": str(out)}, "lora": record["config"]}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\ngrid: {out / 'before_after.png'}\nresults: {out / 'results.json'}")
    return 0


def lora_config(args, data: Path, trigger: str):
    """The issue's LoRA recipe from the command line: ``args`` has base, rank, lr, steps, batch_size,
    text_encoder_lora and seed (bench/lora_combine.py trains its style LoRA with the same recipe)."""
    from difflab.train.lora_config import LoraTrainConfig

    prior = getattr(args, "prior_data", None)
    return LoraTrainConfig(base=args.base, data=str(data), trigger=trigger, rank=args.rank,
                           reg_data=str(prior) if prior else None,
                           prior_loss_weight=getattr(args, "prior_loss_weight", 1.0),
                           learning_rate=args.lr, steps=args.steps, batch_size=args.batch_size,
                           text_encoder_lora=args.text_encoder_lora,
                           network=getattr(args, 'network', 'attention'), checkpoint_every=max(1, args.steps // 4),
                           seed=args.seed, warmup_steps=min(20, args.steps // 10))


def train(config, lora: Path) -> dict:
    """Train ``config`` into the folder ``lora`` (resuming a finished or interrupted run there), printing
    progress; returns the training record (training.json)."""
    from difflab.train.lora import train_lora

    started = time.perf_counter()
    for event in train_lora(config, lora, resume=(lora / "training_state.safetensors").is_file()):
        if event.step % max(1, config.steps // 10) == 0 or event.step == event.total:
            print(f"step {event.step}/{event.total} loss {event.loss:.4f} {event.seconds:.0f}s", file=sys.stderr)
    record = json.loads((lora / "training.json").read_text())
    print(f"trained {lora} in {record['seconds']:.0f}s ({time.perf_counter() - started:.0f}s with loading)",
          file=sys.stderr)
    return record


def train_hexagon(args, out: Path) -> dict:
    """``args.images`` hexagon renders in ``out/data`` (kept when there), the LoRA trained into ``out/lora``."""
    from difflab.data.captioned_folder import write_shape_set

    data = out / "data"
    if not data.is_dir():
        write_shape_set(data, "hexagon", args.images, seed=args.seed)
    if getattr(args, "prior", 0):
        from difflab.data.shapes import BASE_SHAPES
        from difflab.train.prior import write_prior_images
        from difflab.train.t2i import evaluation_prompts

        # other prompts and seeds than the measured ones (seed + 1000), so the measurement is not of its own data
        args.prior_data = out / "prior"
        write_prior_images(args.base, evaluation_prompts(args.prior, args.seed + 1000, shapes=BASE_SHAPES),
                           args.prior_data, seed=args.seed + 1000, guidance=args.guidance, steps=args.sample_steps)
    return train(lora_config(args, data, "hexagon"), out / "lora")


def _write_grid(pipe, lora, prompts: list[str], args, path: Path) -> None:
    import torch

    from difflab.engine.lora import applied_loras
    from difflab.viz.grid import make_grid

    def draw():
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]
        with torch.no_grad():
            return pipe(prompts, num_inference_steps=args.sample_steps, guidance_scale=args.guidance,
                        generator=generators).images

    before = draw()
    with applied_loras(pipe, [lora]):
        after = draw()
    make_grid(before + after, columns=len(prompts), scale=2).save(path)


if __name__ == "__main__":
    sys.exit(main())
