"""Benchmark (issue 4): teach the held-out shape (hexagon) to the bundled model with a LoRA, and measure it.

1. 20 hexagon renders with full captions (``difflab lora make-dataset``'s helper); the trigger word is
   "hexagon" itself, a word the base model's tokenizer has but that base training never showed it. With
   ``--prior N``, N prior-preservation images of the old shapes, drawn by the base model (train/prior.py).
2. ``train_lora`` on the base model (the issue's budget: <= 15 minutes on 2 CPU cores); ``--network`` picks the
   adapted layers (attention, transformer, locon); ``--foreground-weight`` is the masked loss's weight on the
   hexagons' latent pixels (masks written with the set; 0 = the plain loss); ``--min-snr-gamma`` the Min-SNR
   weighting of the timesteps (5 by default; 0 = off).
3. Images through the engine, as ``difflab generate --lora`` draws them (the preset's guidance interval unless
   ``--guidance-end``), read back by the adherence analyzer (difflab.eval.adherence):
   - hexagon prompts, base model (the baseline, measured in the same run): issue target <= 10% hexagons;
   - hexagon prompts, with the LoRA: target >= 70% (also split by size);
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
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-encoder-lora", action="store_true")
    parser.add_argument("--network", default="locon", help="U-Net layers adapted: attention, transformer, locon")
    parser.add_argument("--prior", type=int, default=64,
                        help="prior-preservation images of the old shapes, made by the base model (0 = none)")
    parser.add_argument("--prior-loss-weight", type=float, default=1.0)
    parser.add_argument("--foreground-weight", type=float, default=8.0,
                        help="masked loss: the hexagons' latent pixels count 1 + this many times (masks written with the set)")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0,
                        help="Min-SNR-gamma loss weighting (0 = off, every timestep counts the same)")
    parser.add_argument("--prompts", type=int, default=100, help="prompts per measurement")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--guidance-end", type=float, default=None, help="guidance interval [the preset's]")
    parser.add_argument("--hires-scale", type=float, default=None,
                        help="measure with hires fix: draw at 64x64, upscale by this factor, redraw with img2img [off]")
    parser.add_argument("--hires-strength", type=float, default=None, help="hires fix: img2img strength [engine's]")
    parser.add_argument("--hires-steps", type=int, default=None, help="hires fix: steps of the second pass [--sample-steps]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: no time budget verdict")
    args = parser.parse_args(argv)

    import torch

    from difflab.data.shapes import BASE_SHAPES
    from difflab.engine.pipeline import PipelineCache
    from difflab.eval import t2i
    from difflab.eval.adherence import score
    from difflab.train.t2i import evaluation_prompts

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out

    # 1. train (resumes when a finished or interrupted run is already in --out)
    record = train_hexagon(args, out)
    train_seconds = record["seconds"]

    # 2. measure through the engine, as `difflab generate --lora` draws (the preset's guidance interval unless
    #    --guidance-end): the same prompts and seeds with and without the LoRA, one pipeline cache
    cache = PipelineCache()
    hexagon_prompts = evaluation_prompts(args.prompts, args.seed, shapes=("hexagon",))
    old_prompts = evaluation_prompts(args.prompts, args.seed, shapes=BASE_SHAPES)
    lora = str((out / "lora").resolve())
    extra = {name: getattr(args, name) for name in ("guidance_end", "hires_scale", "hires_strength", "hires_steps")
             if getattr(args, name) is not None}

    def measure(prompts: list[str], loras: list[str]):
        return t2i.score_prompts(prompts, model=args.base, seed=args.seed, cache=cache, guidance=args.guidance,
                                 steps=args.sample_steps, loras=loras, **extra)

    def by_size(prompts: list[str], images: list, size: str) -> float:
        chosen = [i for i, prompt in enumerate(prompts) if f" {size} " in f" {prompt} "]
        return score([images[i] for i in chosen], [prompts[i] for i in chosen]).accuracy["shape"]

    (base_hexagon, base_hexagon_images), (base_old, base_old_images) = (measure(hexagon_prompts, []),
                                                                        measure(old_prompts, []))
    (lora_hexagon, lora_hexagon_images), (lora_old, lora_old_images) = (measure(hexagon_prompts, [lora]),
                                                                        measure(old_prompts, [lora]))
    rows = {
        "hexagon prompts, base (target <= 10%)": base_hexagon.accuracy["shape"],
        "hexagon prompts, LoRA (target >= 70%)": lora_hexagon.accuracy["shape"],
        "  large hexagons, LoRA": by_size(hexagon_prompts, lora_hexagon_images, "large"),
        "  small hexagons, LoRA": by_size(hexagon_prompts, lora_hexagon_images, "small"),
        "old-shape prompts, base": base_old.accuracy["shape"],
        "old-shape prompts, LoRA (target >= 85%)": lora_old.accuracy["shape"],
    }
    print(f"\n{'measurement':<44}{'shape accuracy':>16}")
    for name, value in rows.items():
        print(f"{name:<44}{100 * value:>15.1f}%")
    print(f"{'LoRA training time (target <= 900 s)':<44}{train_seconds:>15.0f}s")
    print("\nwith the LoRA, hexagon prompts:\n" + lora_hexagon.table())

    # 3. before/after grid: base row, LoRA row (the first 6 hexagon and 4 old-shape prompts, as measured)
    from difflab.viz.grid import make_grid

    shown = base_hexagon_images[:6] + base_old_images[:4] + lora_hexagon_images[:6] + lora_old_images[:4]
    make_grid(shown, columns=10, scale=2).save(out / "before_after.png")
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
    from difflab.data.captioned_folder import MASKS_DIR
    from difflab.train.lora_config import LoraTrainConfig

    prior = getattr(args, "prior_data", None)
    return LoraTrainConfig(base=args.base, data=str(data), trigger=trigger, rank=args.rank,
                           reg_data=str(prior) if prior else None,
                           prior_loss_weight=getattr(args, "prior_loss_weight", 1.0),
                           foreground_weight=getattr(args, "foreground_weight", 0.0),
                           masks=str(data / MASKS_DIR) if getattr(args, "foreground_weight", 0.0) else None,
                           min_snr_gamma=getattr(args, "min_snr_gamma", None) or None,
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
    from difflab.data.captioned_folder import MASKS_DIR, write_shape_set

    data = out / "data"
    if not (data / MASKS_DIR).is_dir():  # the same renders again when an older run's set has no masks
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


if __name__ == "__main__":
    sys.exit(main())
