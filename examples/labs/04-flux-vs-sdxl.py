# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 4: Flux against SDXL
#
# Two families dominate open text-to-image models:
#
# - **SDXL** (Stability, 2023): a latent *U-Net* with cross-attention to two CLIP text encoders, a noise-predicting
#   DDPM model sampled in 30-50 steps with classifier-free guidance (two U-Net passes a step).
# - **Flux** (Black Forest Labs, 2024): a *diffusion transformer* (MMDiT: text and image tokens attend to each
#   other in one sequence) trained by *flow matching*, with a T5 text encoder. `flux-schnell` is timestep-distilled
#   to sample in ~4 steps without CFG; `flux-dev` is guidance-distilled (guidance is an input: one pass a step)
#   and takes ~50 steps.
#
# Neither fits a CPU-only machine (SDXL: 2.6B U-Net parameters, Flux: 12B transformer). On a CPU this lab compares
# the families by their architecture and runs the one lesson that transfers, step counts, on the bundled model.
# On a GPU set `MODEL = "sdxl"` or `MODEL = "flux-schnell"` (after `difflab pull`), run it once per model, and the
# timing cells measure the real thing.

# %%
MODEL = "tiny-shapes"

# %%
import time
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.registry import PRESETS, resolve_model
from difflab.engine.request import build_request
from difflab.viz.grid import make_grid

OUT = Path("outputs/lab04")
OUT.mkdir(parents=True, exist_ok=True)
cache = PipelineCache()
model = resolve_model(MODEL)

# %% [markdown]
# ## 1. The presets: what each family expects
#
# difflab's registry carries each family's defaults, so `--model flux-schnell` gets 4 steps and no CFG without
# flags. (`difflab generate --model NAME`)

# %%
rows = [f"| {p.name} | {p.family} | {p.width}x{p.height} | {p.steps} | {p.guidance:g} | {p.scheduler or 'its own'} | {p.notes} |"
        for p in PRESETS.values()]
display(Markdown("| preset | family | size | steps | guidance | sampler | notes |\n|---|---|---|---:|---:|---|---|\n"
                 + "\n".join(rows)))

# %% [markdown]
# ## 2. Architecture side by side
#
# The denoisers' sizes, counted on empty ("meta") weights built from each family's published configuration, so
# nothing is downloaded or allocated; and the model you chose, loaded for real.

# %%
from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel, UNet2DConditionModel

SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
with init_empty_weights():
    blueprints = {
        "SD 1.5 U-Net": UNet2DConditionModel(cross_attention_dim=768),  # diffusers' defaults + CLIP ViT-L's width
        "SDXL U-Net": UNet2DConditionModel(**SDXL_UNET),
        "Flux transformer": FluxTransformer2DModel(),  # diffusers' defaults are FLUX.1's
    }
pipeline, _ = cache.get(model)
denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer")
blueprints[f"{MODEL} ({type(denoiser).__name__}, loaded)"] = denoiser
rows = []
for name, network in blueprints.items():
    count = sum(p.numel() for p in network.parameters())
    attention = sum(1 for m in network.modules() if type(m).__name__.endswith("Attention"))  # Attention, FluxAttention
    rows.append(f"| {name} | {count / 1e6:,.1f} M | {attention} |")
display(Markdown("| denoiser | parameters | attention layers |\n|---|---:|---:|\n" + "\n".join(rows)))

# %% [markdown]
# What differs, and why it matters:
#
# | | SDXL | Flux |
# |---|---|---|
# | denoiser | U-Net: convolutions + attention at low resolutions | transformer over image patches (2x2 latent patches as tokens) |
# | text | two CLIP encoders, read by cross-attention | T5-XXL (+ CLIP pooled), text tokens in the same sequence as image tokens |
# | training target | noise $\varepsilon$ on a DDPM schedule | velocity of a straight path from noise to image (flow matching) |
# | sampling | 30-50 steps, CFG: 2 passes a step | schnell: 4 steps, no CFG; dev: ~50 steps, guidance as an input |
# | latents | VAE, 4 channels, 8x per side | VAE, 16 channels, 8x per side |
#
# Straight paths are why flow matching distils well: a model that follows an almost straight line needs few steps.

# %%
print(f"{MODEL}'s pipeline: {type(pipeline).__name__}")
for name, component in pipeline.components.items():
    if isinstance(component, torch.nn.Module):
        print(f"  {name:>14}: {type(component).__name__}, {sum(p.numel() for p in component.parameters()) / 1e6:.2f} M")
    elif component is not None:
        print(f"  {name:>14}: {type(component).__name__}")

# %% [markdown]
# ## 3. Steps: what a distilled model buys
#
# An undistilled model asked for 4 steps draws a rough image; schnell is trained to finish in 4. On the bundled
# (undistilled) model, adherence and time at 4 and 20 steps, every base shape x colour once
# (`difflab eval adherence --steps N`):

# %%
from difflab.eval.t2i import adherence

steps_to_try = [4, 20] if model.family != "flux" else [4]
rows, tiles = [], []
for steps in steps_to_try:
    started = time.perf_counter()
    report, prompts, images = adherence(MODEL, per_pair=1, cache=cache, steps=steps)
    seconds = time.perf_counter() - started
    rows.append(f"| {steps} | {100 * (report.shape_and_color_accuracy or 0):.0f}% | {seconds / len(images):.2f} |")
    tiles += images[:8]
display(Markdown("| steps | shape and colour right | seconds per image |\n|---:|---:|---:|\n" + "\n".join(rows)))
from difflab.data.shapes import parse_prompt

asked = [parse_prompt(p) for p in prompts[:8]]  # the same prompts and seeds at every step count
make_grid(tiles, columns=8, scale=max(1, 128 // tiles[0].width), labels=[f"{a.size} {a.color} {a.shape}" for a in asked],
          row_labels=[f"{s} steps" for s in steps_to_try]).save(OUT / "steps.png")
display(Image(filename=OUT / "steps.png"))

# %% [markdown]
# Reference numbers from the course material (a 128 GB unified-memory GPU workstation, 1024x1024): SDXL 30 steps
# 5-8 s and ~7 GB; Flux-schnell 4 steps 3-4 s and ~12 GB; Flux-dev 50 steps 15-20 s. Use schnell for drafts and
# dev or SDXL for the final image; when SDXL runs out of memory, `--memory vae_tiling,model_cpu_offload`.
