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
# # Lab 2: text to image
#
# A latent text-to-image model has four parts: a text encoder (CLIP) that turns the prompt into vectors, a U-Net
# that denoises *latents* while attending to those vectors, a VAE that turns latents into pixels, and a scheduler
# (the sampler). This lab drives them through difflab's engine, the same path as `difflab generate`:
# prompts and seeds, classifier-free guidance (measured), negative prompts (measured), schedulers, and the latent
# space itself.
#
# On a CPU it runs on difflab's bundled `tiny-shapes` model (64x64 pictures of one coloured shape, trained by
# difflab in about two hours). On a GPU, set `MODEL = "sdxl"` (or `"sd15"`, `"flux-schnell"`) after
# `difflab pull sdxl`; the prompts in the measured cells are shapes, which any of them can draw.

# %%
MODEL = "tiny-shapes"

# %%
import time
from pathlib import Path

from IPython.display import Image, Markdown, display

from difflab.engine.outputs import save_result
from difflab.engine.pipeline import FAMILIES_WITH_NEGATIVE_PROMPT, PipelineCache, run
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request
from difflab.viz.grid import make_grid

OUT = Path("outputs/lab02")
OUT.mkdir(parents=True, exist_ok=True)
cache = PipelineCache()  # loads each model once; every request below reuses it
model = resolve_model(MODEL)
print(f"{MODEL}: {model.family} family, {model.width}x{model.height}, {model.steps} steps, guidance {model.guidance}, "
      f"scheduler {model.scheduler or 'its own'}; on {cache.placement.describe()}")


def show(images, columns=None, name="grid.png", scale=None, labels=None, row_labels=None):
    """Tile PIL images and display the grid (small models' images are scaled up to be visible), with the columns'
    ``labels`` above them and the rows' ``row_labels`` to their left."""
    scale = scale or max(1, 256 // images[0].width)
    path = OUT / name
    make_grid(images, columns=columns, scale=scale, labels=labels, row_labels=row_labels).save(path)
    display(Image(filename=path))


# %% [markdown]
# ## 1. One prompt, four seeds
#
# A request is validated once (`GenerationRequest`), and image $i$ is drawn from seed $\text{seed} + i$: the seed
# fixes the starting noise, so the same request gives the same images, and another seed another image.
# (`difflab generate "a red circle on a blue background" -n 4`)

# %%
request = build_request(prompt="a red circle on a blue background", model=MODEL, n=4, seed=0)
result = run(request, cache)
print(f"{len(result.images)} images in {result.seconds:.1f} s; seeds {result.seeds}")
show(result.images, columns=4, name="seeds.png", labels=[f"seed {s}" for s in result.seeds])
paths = save_result(result, OUT / "generate", placement=cache.placement)
print("saved with their parameters embedded (A1111 text + difflab's JSON record):", paths[0])
again = run(request, cache)
same = all(a.tobytes() == b.tobytes() for a, b in zip(result.images, again.images))
print("the same request again gives the same pixels:", same)

# %% [markdown]
# ## 2. Guidance, measured
#
# Classifier-free guidance runs the U-Net with and without the prompt and extrapolates:
# $\varepsilon = \varepsilon_\text{uncond} + s(\varepsilon_\text{cond} - \varepsilon_\text{uncond})$.
# `difflab.viz.guidance.guidance_plot` draws the same prompts and seeds at each scale, as an X/Y/Z plot (the
# `difflab xyz` code: rows "CFG Scale", columns "Seed", a block per prompt), and reads shape and colour back with
# a fixed analyzer (adherence), next to how much the seeds still vary (diversity). The paragraph under the table
# is written from its numbers. (`difflab explain guidance`; `difflab eval guidance-sweep` for all 32 prompts)

# %%
from difflab.explain.guidance import sentences
from difflab.viz.guidance import guidance_plot

prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
sweep = guidance_plot(MODEL, prompts, (1.0, 3.0, 7.5, 15.0), seeds=3, cache=cache)
display(Markdown("```\n" + sweep.table() + "\n```"))
print(sentences(sweep.result.rows, len(prompts) * 3))
sweep.grid().save(OUT / "guidance.png")
display(Image(filename=OUT / "guidance.png"))

# %% [markdown]
# *What does guidance 15 do that 7 does not?* Read it off your own table: compare the two rows' adherence and
# diversity, then look at the same seeds in the grid. Where 15 loses adherence, the push overshoots what the
# training images look like; where it loses diversity, every seed is pulled towards one picture of the prompt.
#
# ## 3. Negative prompts, measured
#
# A negative prompt takes the place of the unconditional branch: guidance then pushes *away* from it. "a circle"
# leaves the colour open; with "red" as the negative prompt the share of red circles should fall.
# (`difflab generate "a circle" --negative red`; `difflab eval negative`)

# %%
from difflab.eval.t2i import negative_prompt_effect

if model.family in FAMILIES_WITH_NEGATIVE_PROMPT:
    effect = negative_prompt_effect(MODEL, "a circle", "red", n=12, cache=cache)
    display(Markdown("```\n" + effect.table() + "\n```"))
    show(effect.images_without + effect.images_with, columns=12, name="negative.png", scale=2,
         labels=[f"seed {s}" for s in range(12)], row_labels=["no negative", "negative: red"])
else:
    print(f"the {model.family} family has no negative prompt: it does not use classifier-free guidance")

# %% [markdown]
# ## 4. Schedulers
#
# The sampler is swappable at generation time (A1111 names: `--scheduler "Euler a"`). The same prompt and seed
# under five of them, at 8 and 20 steps, with the time each took.

# %%
schedulers = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras"]
step_counts = [8, 20]
tiles, rows = [], []
for steps in step_counts:
    for scheduler in schedulers:
        scheduler = None if model.family in ("flux", "sd3") else scheduler  # flow-matching models have one sampler
        settings = dict(prompt="a yellow star on a purple background", model=MODEL, seed=3, steps=steps, scheduler=scheduler)
        started = time.perf_counter()
        tiles += run(build_request(**settings), cache).images
        rows.append(f"| {scheduler} | {steps} | {time.perf_counter() - started:.2f} |")
show(tiles, columns=len(schedulers), name="schedulers.png", scale=3, labels=schedulers,
     row_labels=[f"{steps} steps" for steps in step_counts])
display(Markdown("| scheduler | steps | seconds |\n|---|---:|---:|\n" + "\n".join(rows)))

# %% [markdown]
# Ancestral samplers ("Euler a") add fresh noise each step, so their picture changes with the step count; the
# deterministic ones converge to the same picture as steps grow. Time is proportional to steps.
#
# ## 5. Latent space
#
# The U-Net never sees pixels. The VAE encodes an image to latents and decodes latents back; diffusion runs in
# between. Each latent channel shown as a grey picture, next to the image and its round trip:

# %%
from difflab.data.shapes import ShapeSpec, render
from difflab.viz.latents import latent_grid, vae_round_trip

pipeline, _ = cache.get(model)
for name in ("text_encoder", "unet", "vae"):
    part = getattr(pipeline, name)
    print(f"{name:>12}: {type(part).__name__}, {sum(p.numel() for p in part.parameters()):,} parameters")
print(f"{'scheduler':>12}: {type(pipeline.scheduler).__name__}")
specs = [ShapeSpec("circle", "red", "white", "centre", "large"), ShapeSpec("star", "yellow", "blue", "left", "large")]
trip = vae_round_trip(pipeline.vae, [render(spec, resolution=model.width) for spec in specs])
print(f"pixels {tuple(trip.images.shape[1:])} = {trip.pixel_values} numbers -> latents "
      f"{tuple(trip.latents.shape[1:])} = {trip.latent_values} numbers ({trip.pixel_values / trip.latent_values:.0f}x fewer); "
      f"round-trip RMS error {trip.rms_error:.3f}")
latent_grid(trip, scale=2).save(OUT / "latents.png")
display(Image(filename=OUT / "latents.png"))

# %% [markdown]
# For SD1.5 the VAE maps 512x512x3 to 64x64x4 (8x per side), SDXL 1024x1024x3 to 128x128x4: every U-Net step
# works on 48x fewer numbers than the image has, which is what makes latent diffusion affordable. The price is
# the VAE's reconstruction error: fine detail the VAE cannot represent, diffusion cannot draw.
# `difflab explain latent-space` and `difflab explain guidance` repeat sections 2 and 5 in a terminal;
# `difflab explain vae` measures what the round trip loses per shape size and why a swapped-in VAE (`--vae`) must
# keep the latents' scale; `difflab explain clip-skip` draws the same seeds at clip skip 1-3 and measures the
# change (`--clip-skip N`).
