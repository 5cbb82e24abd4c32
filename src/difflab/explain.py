"""``difflab explain TOPIC``: a short terminal walk-through of one idea that runs the real code and saves a figure.

Each topic is a generator of lines (so the terminal shows them as the work happens) that ends with the figure's
path. Pixel-space topics run on the bundled digits model; text-to-image topics on a text-to-image model (the
bundled tiny-shapes by default), with a clear error when that model is not on this machine. Everything here calls
the same functions the labs and the ``difflab viz`` commands use; nothing is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

DIGITS_SUBDIR = "digits"


@dataclass(frozen=True)
class Topic:
    name: str
    summary: str
    run: Callable[["Context"], Iterator[str]]
    model_kind: str  # "digits" or "text-to-image": which model the walk-through runs on


@dataclass(frozen=True)
class Context:
    out: Path  # folder for figures
    model: str  # text-to-image model for the topics that need one
    digits: Path  # digits checkpoint folder
    seed: int = 0


# --- pixel space, on the digits model ---------------------------------------------------------------------------


def forward_process(ctx: Context) -> Iterator[str]:
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import denoiser_for
    from difflab.core.process import q_sample
    from difflab.viz.forward import load_image_tensor
    from difflab.viz.grid import make_grid, to_pil

    yield "Training noises a real image to a random step t in one jump:"
    yield "    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)"
    yield "and teaches the network to predict eps. Below, a real digit noised to six steps, and the bundled"
    yield "digits model's estimate of the clean image from each noisy one, in a single network call:"
    model = load_model(ctx.digits)
    schedule, denoiser = model.schedule, denoiser_for(model)
    x_0 = load_image_tensor("digit:0", model.spec.unet.image_size)  # (1, 1, 8, 8)
    label = torch.tensor([0]) if model.spec.unet.num_classes else None
    noise = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(ctx.seed))
    steps = [0, 100, 250, 500, 750, schedule.num_timesteps - 1]
    noisy, estimates = [], []
    yield f"{'t':>6} {'signal kept':>12} {'error of x0 estimate (RMS)':>28}"
    with torch.inference_mode():
        for t in steps:
            x_t = q_sample(schedule, x_0, torch.tensor([t]), noise).float()
            alpha_bar = float(schedule.alphas_cumprod[t])
            sigma = schedule.sigmas[t].reshape(1)
            estimate = denoiser(x_t / alpha_bar**0.5, sigma, label).clamp(-1, 1)  # the VE-scale input it expects
            noisy.append(x_t)
            estimates.append(estimate)
            error = float((estimate - x_0).pow(2).mean().sqrt()) / 2  # on the [0, 1] pixel scale
            yield f"{t:>6} {alpha_bar:>11.1%} {error:>28.3f}"
    yield "At small t the noise is easy to remove; at t = 999 almost nothing of the digit is left and the estimate"
    yield "is a guess. That is why training covers every t: generation starts from pure noise and needs the"
    yield "network at every noise level on the way back."
    tiles = to_pil(torch.cat(noisy).clamp(-1, 1)) + to_pil(torch.cat(estimates))
    path = _save(make_grid(tiles, columns=len(steps), scale=8, labels=[f"t={t}" for t in steps]), ctx, "forward-process.png")
    yield "figure (top: x_t; bottom: the model's x0 estimate):"
    yield str(path)


def schedulers(ctx: Context) -> Iterator[str]:
    from difflab.core.checkpoint import load_model
    from difflab.viz.samplers import compare_samplers, plot_sampler_comparison

    yield "A sampler decides how to walk from noise back to an image. DDPM draws from the posterior with fresh"
    yield "noise at every step (built for 1000 steps); DDIM follows the deterministic ODE; DPM-Solver++ reuses the"
    yield "previous step's estimate (a second-order multistep method). Same model, same seeds, 5 and 20 steps:"
    model = load_model(ctx.digits)
    result = compare_samplers(model, ["ddpm", "ddim", "dpmpp-2m"], [5, 20], per_class=5, seed=ctx.seed)
    yield from result.table().splitlines()
    yield "FD: Frechet distance to the real digits (lower is better; real digits of the same count score the last"
    yield "row). A good solver at 5 steps beats DDPM at 5 steps: fewer steps need a smarter step, not more noise."
    yield "figure:"
    yield str(plot_sampler_comparison(result, ctx.out / "schedulers.png"))


# --- latent text-to-image models -------------------------------------------------------------------------------


def _pipeline(ctx: Context):
    from difflab.engine.pipeline import PipelineCache
    from difflab.engine.registry import resolve_model

    model = resolve_model(ctx.model)  # ModelNotAvailable (a ValueError) names the model and where it was looked for
    pipeline, _ = PipelineCache().get(model)
    return model, pipeline


def guidance(ctx: Context) -> Iterator[str]:
    from difflab.eval.t2i import guidance_sweep, sweep_grid
    from difflab.engine.registry import resolve_model

    yield "Classifier-free guidance runs the model twice a step, with and without the prompt, and pushes past"
    yield "the prompt's direction:  eps = eps_uncond + s (eps_cond - eps_uncond).  s = 1 is no guidance."
    resolve_model(ctx.model)
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    yield f"Sweeping s on {ctx.model}, {len(prompts)} prompts x 2 seeds, read back by the shapes analyzer:"
    result = guidance_sweep(ctx.model, (1.0, 3.0, 7.5, 15.0), seeds_per_prompt=2, seed=ctx.seed, prompts=prompts)
    yield from result.table().splitlines()
    yield "Low s: varied but often off-prompt. Around 7.5: on-prompt. 15: still on-prompt but less varied and"
    yield "over-saturated, because the push overshoots what real images look like."
    yield "figure (rows: guidance 1, 3, 7.5, 15; the same seeds in every row):"
    yield str(_save(sweep_grid(result, prompts_shown=len(prompts), scale=2), ctx, "guidance.png"))


def latent_space(ctx: Context) -> Iterator[str]:
    from difflab.data.shapes import ShapeSpec, render
    from difflab.viz.latents import latent_grid, vae_round_trip

    model, pipeline = _pipeline(ctx)
    specs = [ShapeSpec("circle", "red", "white", "centre", "large"), ShapeSpec("star", "yellow", "blue", "left", "large"),
             ShapeSpec("square", "green", "black", "right", "small")]
    images = [render(spec, resolution=model.width) for spec in specs]
    trip = vae_round_trip(pipeline.vae, images)
    height, width = trip.images.shape[-2:]
    latent_shape = "x".join(str(s) for s in trip.latents.shape[1:])
    yield "Latent diffusion runs the denoiser on an autoencoder's compressed latents, not on pixels."
    yield f"{ctx.model}: a {width}x{height}x3 image ({trip.pixel_values} numbers) -> latents {latent_shape} " \
          f"({trip.latent_values} numbers), {trip.pixel_values / trip.latent_values:.0f}x fewer; " \
          f"{width // trip.latents.shape[-1]}x smaller per side."
    yield f"Decoding the latents gives the image back with an RMS error of {trip.rms_error:.3f} (0..1 pixel scale)."
    yield "Every U-Net step costs in proportion to the latent size: SD's VAE (8x per side, 512x512x3 -> 64x64x4)"
    yield "leaves 64x fewer positions (48x fewer numbers) to denoise at every step; the VAE runs once, at the end."
    yield "figure (image, each latent channel, decoded image):"
    yield str(_save(latent_grid(trip), ctx, "latent-space.png"))


def lora(ctx: Context) -> Iterator[str]:
    from difflab.train.lora_config import UNET_TARGETS

    model, pipeline = _pipeline(ctx)
    unet = pipeline.unet
    total = sum(p.numel() for p in unet.parameters())
    targets = [m for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in UNET_TARGETS)]
    yield "A LoRA freezes each weight W (out x in) and learns a low-rank change B A, with A (r x in), B (out x r):"
    yield "r (in + out) numbers instead of in x out. difflab trains it on the attention projections"
    yield f"({', '.join(UNET_TARGETS)}), like diffusers' example. On {ctx.model}'s U-Net ({len(targets)} such layers):"
    yield f"{'':>12} {'parameters':>12} {'MB (fp32)':>10} {'share':>8}"
    yield f"{'U-Net':>12} {total:>12,} {total * 4 / 2**20:>10.2f} {1:>8.1%}"
    rows = []
    for rank in (4, 8, 16):
        count = sum(rank * (m.in_features + m.out_features) for m in targets)
        rows.append((rank, count))
        yield f"{'LoRA r=' + str(rank):>12} {count:>12,} {count * 4 / 2**20:>10.2f} {count / total:>8.1%}"
    yield "Why so small: only a few layers change, and each change is a thin product of two matrices. On SDXL"
    yield "(2.6B U-Net parameters) the same count gives LoRAs of tens of MB against a 5 GB model."
    yield "figure:"
    yield str(_bar_chart(total, rows, ctx))


def controlnet(ctx: Context) -> Iterator[str]:
    from difflab.data.shapes import ShapeSpec, render
    from difflab.viz.grid import make_grid

    try:
        from difflab.engine.control import canny
    except ImportError:
        raise ValueError("topic controlnet: this difflab has no ControlNet support yet (difflab.engine.control, "
                         "issue 5)") from None
    model_width = 64
    picture = render(ShapeSpec("star", "orange", "blue", "centre", "large"), resolution=model_width)
    edges = canny(picture)
    yield "A ControlNet is a trainable copy of the U-Net's encoder that reads a map (edges, depth, a pose) and"
    yield "adds its features to the frozen U-Net's skip connections through zero-initialised convolutions, so the"
    yield "layout comes from the map and the rest from the prompt. The canny preprocessor turns a picture into"
    yield "the map; the conditioning scale multiplies what the ControlNet adds (0 = ignored, 1 = as trained;"
    yield "raise it when the control is ignored). `difflab generate --control canny:IMAGE:SCALE` uses it."
    yield "figure (picture, canny map):"
    yield str(_save(make_grid([picture, edges.convert("RGB")], columns=2, scale=4, labels=["picture", "canny"]),
                    ctx, "controlnet.png"))


TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic("forward-process", "noising to any step in one jump, and the model undoing it", forward_process, "digits"),
    Topic("schedulers", "samplers and step counts, with measured quality and time", schedulers, "digits"),
    Topic("guidance", "classifier-free guidance: on-prompt versus varied", guidance, "text-to-image"),
    Topic("latent-space", "what the VAE compresses and gives back", latent_space, "text-to-image"),
    Topic("lora", "why a LoRA is so much smaller than the model", lora, "text-to-image"),
    Topic("controlnet", "steering the layout with a map", controlnet, "text-to-image"),
)}
ALIASES = {"forward": "forward-process", "samplers": "schedulers", "cfg": "guidance", "latent": "latent-space",
           "latents": "latent-space", "vae": "latent-space", "control": "controlnet"}


def resolve_topic(name: str) -> Topic:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in TOPICS:
        raise ValueError(f"topic must be one of {', '.join(TOPICS)}; got {name!r}")
    return TOPICS[key]


def explain(topic: str, out: str | Path, *, model: str = "tiny-shapes", digits: Optional[Path] = None,
            seed: int = 0) -> Iterator[str]:
    """Lines of the walk-through; the last line is the figure's path. ValueError for an unknown topic or a missing
    model (before anything is written)."""
    chosen = resolve_topic(topic)
    digits = digits if digits is not None else bundled_digits()
    if chosen.model_kind == "text-to-image":
        from difflab.engine.registry import resolve_model

        try:
            resolve_model(model)
        except ValueError as error:
            raise ValueError(f"topic {chosen.name} runs on a text-to-image model: {error}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yield from chosen.run(Context(out, model, Path(digits), seed))


def bundled_digits() -> Path:
    from difflab.engine.registry import BUNDLED_DIR

    return BUNDLED_DIR / DIGITS_SUBDIR


def _save(image, ctx: Context, name: str) -> Path:
    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.viz.grid import png_bytes

    path = ctx.out / name
    atomic_write_bytes(path, png_bytes(image))
    return path


def _bar_chart(total: int, rows: list[tuple[int, int]], ctx: Context) -> Path:
    from difflab.viz.curves import _pyplot

    plt = _pyplot()
    names = ["U-Net"] + [f"LoRA r={rank}" for rank, _ in rows]
    sizes = [total * 4 / 2**20] + [count * 4 / 2**20 for _, count in rows]
    figure, axis = plt.subplots(figsize=(6, 3), dpi=100)
    axis.bar(names, sizes, color=["tab:gray"] + ["tab:blue"] * len(rows))
    axis.set_yscale("log")
    axis.set_ylabel("MB (fp32, log scale)")
    axis.set_title(f"{ctx.model}: the U-Net against LoRAs on its attention projections")
    for x, size in enumerate(sizes):
        axis.text(x, size, f"{size:.2f}", ha="center", va="bottom", fontsize=8)
    figure.tight_layout()
    path = ctx.out / "lora.png"
    figure.savefig(path)
    plt.close(figure)
    return path
