"""Diagnosis (issue 4): at which noise level does the model lose a small hexagon's corners, with and without a LoRA?

Fresh hexagon renders (not a training set) of each size are encoded, noised to timestep t and denoised in one step:
the U-Net's x0 prediction (v-prediction: x0 = sqrt(abar) z_t - sqrt(1 - abar) v; epsilon: (z_t - sqrt(1 - abar)
eps) / sqrt(abar)), decoded, is read back by the
adherence analyzer. ``t = 0 (VAE)`` is the encoder's own latent decoded: the most any U-Net could give back.
``--data DIR`` reads a LoRA's training images instead (does it even keep the corners of what it was trained on?).

    .venv/bin/python bench/lora_hexagon_denoise.py --lora runs/lora-hexagon/lora
    .venv/bin/python bench/lora_hexagon_denoise.py --lora runs/lora-hexagon/lora --data runs/lora-hexagon/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-shapes", help="base model (preset or diffusers folder)")
    parser.add_argument("--lora", action="append", default=[], help="LoRA folder or file (repeatable: one column each)")
    parser.add_argument("--data", type=Path, default=None, help="read these captioned images instead of fresh renders")
    parser.add_argument("--per-size", type=int, default=24, help="fresh renders per size")
    parser.add_argument("--timesteps", default="25,50,100,200,300,500")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from difflab.engine.registry import resolve_model

    images, captions, sizes = _hexagons(args)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    columns = ["base"] + args.lora
    path = str(resolve_model(args.base).path)
    results: dict[str, dict[str, list[bool]]] = {}
    for column in columns:
        pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
        if column != "base":
            pipe.load_lora_weights(column)
        results[column] = _read_by_noise(pipe, images, captions, timesteps, args.seed)

    print(f"\nhexagons read back as hexagons ({len(images)} images: "
          f"{sizes.count('small')} small, {sizes.count('large')} large)")
    header = f"{'x0 prediction from':<20}" + "".join(f"{Path(c).parent.name if c != 'base' else c:>22}" for c in columns)
    print(header + "\n" + " " * 20 + "".join(f"{'small / large':>22}" for _ in columns))
    for row in results["base"]:
        cells = []
        for column in columns:
            hits = results[column][row]
            share = {s: np.mean([h for h, size in zip(hits, sizes) if size == s]) for s in ("small", "large")}
            cells.append(f"{100 * share['small']:>12.0f}% / {100 * share['large']:>3.0f}%")
        print(f"{row:<20}" + "".join(f"{c:>22}" for c in cells))
    return 0


def _hexagons(args):
    """(images (N, 3, H, W) in [-1, 1], captions, sizes): the training set in --data, or fresh full-caption
    renders of each size."""
    import numpy as np
    import torch
    from PIL import Image

    from difflab.data import shapes

    if args.data:
        from difflab.eval.adherence import read_image

        files = sorted(args.data.glob("*.png"))
        images = [Image.open(f).convert("RGB") for f in files]
        captions = [f.with_suffix(".txt").read_text().strip() for f in files]
        sizes = [read_image(im).size for im in images]  # off the clean render: a training caption need not say it
        return torch.stack([shapes.image_to_tensor(im) for im in images]), captions, sizes
    rng = np.random.default_rng(args.seed)
    images, captions, sizes = [], [], []
    for size in ("small", "large"):
        for _ in range(args.per_size):
            drawn = shapes.random_spec(rng, ("hexagon",))
            spec = shapes.ShapeSpec("hexagon", drawn.color, drawn.background, drawn.position, size)
            images.append(shapes.image_to_tensor(shapes.render(spec, rng)))
            captions.append(shapes.caption(spec, rng, "full"))
            sizes.append(size)
    return torch.stack(images), captions, sizes


def _read_by_noise(pipe, images, captions, timesteps, seed) -> dict[str, list[bool]]:
    """Per row (the VAE alone, then each timestep): is each image's one-step x0 prediction read as a hexagon?"""
    import torch

    from difflab.eval.adherence import read_image

    vae, unet, scheduler = pipe.vae, pipe.unet, pipe.scheduler

    def read(latents):
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return [read_image(p).shape == "hexagon" for p in pixels]

    with torch.no_grad():
        z_0 = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
        text = pipe.encode_prompt(captions, "cpu", 1, False)[0]
        rows = {"t = 0 (VAE)": read(z_0)}
        generator = torch.Generator().manual_seed(seed)
        alphas_cumprod = scheduler.alphas_cumprod
        for t in timesteps:
            eps = torch.randn(z_0.shape, generator=generator)
            a, s = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()
            z_t = a * z_0 + s * eps
            output = unet(z_t, torch.full((len(z_0),), t), encoder_hidden_states=text).sample
            if scheduler.config.prediction_type == "v_prediction":
                x_0 = a * z_t - s * output
            else:  # epsilon
                x_0 = (z_t - s * output) / a
            rows[f"t = {t}"] = read(x_0)
    return rows


if __name__ == "__main__":
    sys.exit(main())
