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
# # Lab 5: teaching a model something new with a LoRA
#
# A LoRA (Hu et al. 2021) keeps every weight $W$ of the model frozen and learns a low-rank change beside some of
# them: $W + \frac{\alpha}{r} B A$ with $A$ ($r \times$ in) and $B$ (out $\times r$), $B$ starting at zero so
# step 0 is the unchanged model. Only $A$ and $B$ are trained and saved: megabytes instead of gigabytes.
#
# The bundled `tiny-shapes` model was trained on circles, squares, triangles and stars; hexagons were held out on
# purpose. This lab writes a 20-image hexagon dataset, trains a LoRA on it for a few steps, and shows the model
# before and after, and at several LoRA weights, read back by the shapes analyzer. A few steps only start the job:
# `bench/lora_hexagon.py` is the full run (1600 steps of a LoCon with prior preservation, a masked loss and
# Min-SNR weighting, measured before/after adherence). On a GPU set `MODEL` to an
# SD1.5-family model, SDXL or Flux (LoRA training supports the `sd`, `sdxl` and `flux` families).

# %%
MODEL = "tiny-shapes"

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

from difflab.engine.pipeline import PipelineCache
from difflab.engine.registry import resolve_model
from difflab.eval import t2i
from difflab.eval.adherence import score
from difflab.viz.grid import make_grid

OUT = Path("outputs/lab05")
OUT.mkdir(parents=True, exist_ok=True)
cache = PipelineCache()
model = resolve_model(MODEL)


def show(images, columns=None, name="grid.png", scale=None, labels=None, row_labels=None):
    scale = scale or max(1, 256 // images[0].width)
    make_grid(images, columns=columns, scale=scale, labels=labels, row_labels=row_labels).save(OUT / name)
    display(Image(filename=OUT / name))


# %% [markdown]
# ## 1. The dataset: 20 captioned hexagons
#
# Images with same-named `.txt` captions, the layout every LoRA trainer reads. The trigger word is "hexagon"
# itself: a word the tokenizer knows but the base model never saw drawn. (`difflab lora make-dataset --shape
# hexagon -n 20 -o data`)

# %%
from difflab.data.captioned_folder import write_shape_set

data = OUT / "hexagons"
paths = write_shape_set(data, "hexagon", 20, seed=0, resolution=model.width)
print((data / "0000.txt").read_text().strip(), "...")
from PIL import Image as PILImage

show([PILImage.open(p) for p in sorted(data.glob("*.png"))[:10]], columns=10, name="dataset.png", scale=2)

# %% [markdown]
# ## 2. Before: the base model asked for hexagons
#
# The same prompts and seeds are used before and after; the analyzer reads which shape each image shows.

# %%
prompts = ["a red hexagon on white", "a blue hexagon on yellow", "a green hexagon on black", "a purple hexagon on white"]
before = [image for group in t2i.generate(prompts, model=MODEL, seeds_per_prompt=2, cache=cache) for image in group]
before_report = score(before, [p for p in prompts for _ in range(2)])
print(f"base model: {100 * before_report.accuracy['shape']:.0f}% of the images read as hexagons")
show(before, columns=8, name="before.png", scale=2,
     labels=[f"{p.split()[1]}, seed {i}" for p in prompts for i in range(2)], row_labels=["base"])

# %% [markdown]
# ## 3. Training
#
# `difflab.train.lora.train_lora` puts peft adapters on the U-Net's attention projections (to_q, to_k, to_v,
# to_out.0; `network="locon"` also adapts the ResNet convolutions, where outlines are drawn), caches the VAE
# latents of the images, and minimises the base model's own denoising loss on them (with `reg_data`, plus the loss
# on images the base model drew itself: DreamBooth's prior preservation, which keeps the old shapes; with
# `foreground_weight` and `masks`, the latent pixels under the hexagon count more, kohya's masked loss; with
# `min_snr_gamma`, the steps of middle noise count most, Min-SNR weighting). It yields an
# event per step and writes the LoRA in diffusers and kohya formats with a JSON record.
# (`difflab train lora --data hexagons --trigger hexagon --steps 30 -o lora`)

# %%
from difflab.train.lora import train_lora
from difflab.train.lora_config import LoraTrainConfig

config = LoraTrainConfig(base=MODEL, data=str(data), trigger="hexagon", rank=8, steps=30, batch_size=4,
                         learning_rate=1e-3, warmup_steps=5, checkpoint_every=30, seed=0)
for event in train_lora(config, OUT / "lora"):
    if event.step % 10 == 0:
        print(f"step {event.step:>3}: loss {event.loss:.3f} ({event.seconds:.0f} s)")
display(Image(filename=OUT / "lora" / "loss.png"))
lora_file = OUT / "lora" / "pytorch_lora_weights.safetensors"
model_bytes = sum(f.stat().st_size for f in Path(model.path).rglob("*.safetensors"))
print(f"LoRA file: {lora_file.stat().st_size / 2**20:.2f} MB; the whole model: {model_bytes / 2**20:.1f} MB")

# %% [markdown]
# *Why is a LoRA so much smaller than the model?* It stores only $A$ and $B$ for a few layers: $r(\text{in} +
# \text{out})$ numbers per layer instead of in $\times$ out, and nothing for the rest (`difflab explain lora`).
#
# ## 4. After, and the LoRA weight
#
# A LoRA is applied at generation time with a weight: `--lora PATH:WEIGHT`, several combine
# (`--lora a:0.7 --lora b:0.5`). The engine loads it for one request and always unloads it after.
# Rows: weight 0 (the base model), 0.5, 1, 1.5; same prompts and seeds in every row.
# (`difflab viz lora-weights outputs/lab05/lora -p "a red hexagon on white" --weights 0,0.5,1,1.5`)

# %%
from difflab.viz.lora_weights import lora_weight_sweep

sweep = lora_weight_sweep(MODEL, str(OUT / "lora"), prompts, (0.0, 0.5, 1.0, 1.5), seeds=2, cache=cache)
display(Markdown(sweep.table()))
sweep.grid().save(OUT / "weights.png")
display(Image(filename=OUT / "weights.png"))

# %% [markdown]
# After 30 steps the LoRA has barely started: compare the full run's numbers in `bench/lora_hexagon.py`'s
# results. When a LoRA seems to do nothing, check the three usual causes: the path, the trigger word in the
# prompt, and the weight.
