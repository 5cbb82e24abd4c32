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
# # Lab 1: diffusion from scratch
#
# A diffusion model learns to undo noise. Training adds Gaussian noise to real images at a random strength and
# teaches a network to predict that noise; generation starts from pure noise and removes it step by step.
# This lab does all of it in pixel space on 8x8 handwritten digits, with difflab's plain-PyTorch `difflab.core`
# (no diffusers), so every step is small enough to look at:
#
# 1. the forward process, noising an image to any step in one jump;
# 2. noise schedules: linear against cosine;
# 3. a short training run;
# 4. sampling the bundled digits model with several samplers from the same seed;
# 5. the denoising trajectory, the model's guess of the clean image at every step (also as a GIF);
# 6. samplers x steps, with measured quality and time.
#
# Runs top to bottom on a CPU in a few minutes. Every picture is also one command away outside the notebook
# (`difflab viz ...`, shown beside each cell).

# %%
MODEL = "tiny-shapes"

# %% [markdown]
# Every lab starts with the model it runs on. Lab 1 works on pixels with difflab's own digits model
# (`src/difflab/models/digits`); `MODEL` is used from lab 2 on and is here so each lab begins the same way.

# %%
import time
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from difflab.core.checkpoint import load_model
from difflab.core.generate import SampleRequest, sample_images, sample_steps
from difflab.core.process import q_sample
from difflab.core.schedules import NoiseSchedule
from difflab.engine.registry import BUNDLED_DIR
from difflab.eval.digits_metrics import evaluate_digit_samples, noise_floor
from difflab.viz.grid import make_grid, to_pil

DIGITS_MODEL = BUNDLED_DIR / "digits"  # 1.8M parameters, 4,000 training steps: see its README.md (model card)
OUT = Path("outputs/lab01")
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The forward process
#
# With $\bar\alpha_t = \prod_{s \le t}(1 - \beta_s)$, the noised image at step $t$ is
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\varepsilon$, $\varepsilon \sim \mathcal N(0, I)$:
# there is no need to add noise 500 times to get $x_{500}$. One row per schedule, the same noise everywhere.
# (`difflab viz forward digit:0 -o forward.png`)

# %%
from difflab.viz.forward import forward_grid, load_image_tensor

x_0 = load_image_tensor("digit:0", 8)  # (1, 1, 8, 8) in [-1, 1]: the model's own resolution
# the grid noises the digit drawn 48 px wide (each pixel noised on its own), so the labels fit above the columns
forward_grid(load_image_tensor("digit:0", 48), ["linear", "cosine"], columns=10, seed=0).save(OUT / "forward.png")
display(Image(filename=OUT / "forward.png"))

# %% [markdown]
# The jump is exact, not an approximation: add noise one step at a time, $x_t = \sqrt{1-\beta_t}\,x_{t-1} +
# \sqrt{\beta_t}\,\varepsilon_t$, to 4,000 copies of the digit, and the mean and spread at $t = 500$ match the
# one-jump formula.

# %%
schedule = NoiseSchedule.create("linear")
t = 500
copies = x_0.repeat(4000, 1, 1, 1).double()
generator = torch.Generator().manual_seed(0)
x = copies
for beta in schedule.betas[: t + 1]:
    x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=generator, dtype=torch.float64)
jump = q_sample(schedule, copies, torch.full((4000,), t), torch.randn(copies.shape, generator=generator, dtype=torch.float64))
alpha_bar = schedule.alphas_cumprod[t]


def signal_scale(samples):  # least-squares slope of the per-pixel mean of x_t against x_0, over all 64 pixels
    return float((samples.mean(0) * x_0[0]).sum() / x_0[0].pow(2).sum())


print(f"t = {t}: alpha_bar = {alpha_bar:.4f}")
print(f"  signal kept (mean x_t / x_0): step by step {signal_scale(x):.3f}, one jump {signal_scale(jump):.3f}, "
      f"formula sqrt(alpha_bar) = {alpha_bar.sqrt():.3f}")
print(f"  noise (std of x_t):           step by step {x.std(0).mean():.3f}, one jump {jump.std(0).mean():.3f}, "
      f"formula sqrt(1 - alpha_bar) = {(1 - alpha_bar).sqrt():.3f}")

# %% [markdown]
# ## 2. Noise schedules: linear against cosine
#
# DDPM's linear schedule raises $\beta_t$ evenly from $10^{-4}$ to $0.02$; the cosine schedule (Nichol & Dhariwal
# 2021) is defined by $\bar\alpha_t$ instead, and is gentle at both ends. Left: the signal kept; right: the
# log signal-to-noise ratio. (`difflab viz schedules -o schedules.png`)

# %%
from difflab.viz.curves import plot_schedules

display(Image(filename=plot_schedules(["linear", "cosine"], OUT / "schedules.png")))
for name in ("linear", "cosine"):
    alpha_bar = NoiseSchedule.create(name).alphas_cumprod
    half = int((alpha_bar < 0.5).nonzero()[0])
    nearly_noise = float((alpha_bar < 0.01).double().mean())
    print(f"{name:>6}: half the signal gone at t = {half}; {nearly_noise:.0%} of the steps keep < 1% of the signal")

# %% [markdown]
# The linear schedule destroys the image early: about a third of its steps see almost pure noise, where the
# network has little to learn. The cosine schedule spends those steps at noise levels that still hold structure,
# which matters most for small images like these, where fine detail is gone after a little noise.
#
# ## 3. Training, briefly
#
# One training step (Ho et al. 2020, algorithm 1): draw images $x_0$, a step $t \sim U\{0..T-1\}$ ($T = 1000$) and
# noise $\varepsilon$; the loss is $\lVert \varepsilon - \varepsilon_\theta(x_t, t, \text{label}) \rVert^2$. 10% of
# the labels are replaced by a "no label" class, so the same network also learns the unconditional model that
# classifier-free guidance needs. `difflab.core.train.train` yields an event per step; this run is 200 steps of a
# small U-Net, a minute on a CPU. The bundled model is the long run: 4,000 steps of a 1.8M-parameter U-Net
# (`difflab ddpm train --steps 4000`, its recipe is in the model card).

# %%
from difflab.core.train import TrainConfig, train
from difflab.core.unet import UNetConfig
from difflab.data.digits import load_digits

digits = load_digits()
small_unet = UNetConfig(image_size=8, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
                        num_res_blocks=1, norm_groups=8, num_classes=10)
short_run = TrainConfig(steps=200, batch_size=64, warmup_steps=20, checkpoint_every=200, seed=0)
started = time.perf_counter()
for event in train(digits, small_unet, short_run, OUT / "short-run", dataset_name="digits"):
    if event.step % 50 == 0:
        print(f"step {event.step:>3}: loss {event.loss:.3f}")
print(f"{time.perf_counter() - started:.0f} s")
display(Image(filename=OUT / "short-run" / "loss.png"))

# %% [markdown]
# The same request to both models: 10 samples of each digit, DPM-Solver++ at 20 steps, guidance 3, sample $i$
# seeded $i$. Top: the 200-step model; bottom: the bundled one. Below them, their measured quality: the Frechet
# distance of the pixels to the real digits (lower is better; read it against what 100 *real* digits score) and
# the share a fixed classifier reads as the digit asked for (`difflab.eval.digits_metrics`).

# %%
labels = tuple(digit for digit in range(10) for _ in range(10))
request = SampleRequest(labels=labels, sampler="dpmpp-2m", steps=20, guidance=3.0, seed=0)
bundled = load_model(DIGITS_MODEL)
samples = {"200 steps": sample_images(load_model(OUT / "short-run"), request), "bundled": sample_images(bundled, request)}
first = [i for i in range(len(labels)) if i % 10 == 0]  # one of each digit
tiles = [tile for name in samples for tile in to_pil(samples[name][first])]
make_grid(tiles, columns=10, scale=6, labels=[f"digit {d}" for d in range(10)],
          row_labels=list(samples)).save(OUT / "short-vs-bundled.png")
display(Image(filename=OUT / "short-vs-bundled.png"))
floor = noise_floor(len(labels))
for name, images in samples.items():
    scores = evaluate_digit_samples(images, labels)
    print(f"{name:>9}: FD {scores.frechet:6.1f}, class accuracy {scores.accuracy:.0%}")
print(f"real digits, {floor.n} of them: FD {floor.frechet:.1f} ± {floor.spread:.1f}")

# %% [markdown]
# ## 4. Samplers, same seed
#
# Generation runs the process backwards. Samplers differ in how they take each step: DDPM draws from the
# posterior (fresh noise every step, made for 1000 steps); DDIM and Euler follow the deterministic "probability
# flow" ODE; Euler ancestral adds noise back; Heun is second order (two network calls a step); DPM-Solver++(2M)
# reuses the previous step's estimate. All rows start from the same noise (sample $i$ from seed $i$), 20 steps.
# (`difflab ddpm sample --sampler NAME --steps 20`)

# %%
sampler_names = ["ddpm", "ddim", "euler", "euler-ancestral", "heun", "dpmpp-2m"]
one_each = tuple(range(10))
rows = {name: sample_images(bundled, SampleRequest(labels=one_each, sampler=name, steps=20, seed=0))
        for name in sampler_names}
make_grid([tile for name in sampler_names for tile in to_pil(rows[name])], columns=10, scale=6,
          labels=[f"digit {d}" for d in one_each], row_labels=sampler_names).save(OUT / "samplers-same-seed.png")
print("rows, top to bottom:", ", ".join(sampler_names))
display(Image(filename=OUT / "samplers-same-seed.png"))
print("DDIM (eta = 0) and Euler give the same images:", torch.allclose(rows["ddim"], rows["euler"], atol=1e-5),
      "- DDIM is Euler's method on the probability-flow ODE (Karras et al. 2022)")

# %% [markdown]
# ## 5. The denoising trajectory
#
# At every step the network estimates the clean image $\hat x_0$ from the current noisy state. Top row: the
# state; bottom row: $\hat x_0$, at 10 of the 20 steps of one sample. (`difflab viz trajectory --label 3 --gif
# trajectory.gif`)

# %%
from difflab.viz.animation import trajectory_gif
from difflab.viz.trajectory import trajectory_grid

trajectory = list(sample_steps(bundled, SampleRequest(labels=(3,) * 8, sampler="dpmpp-2m", steps=20, seed=0)))
trajectory_grid(trajectory).save(OUT / "trajectory.png")
display(Image(filename=OUT / "trajectory.png"))
display(Image(filename=trajectory_gif(trajectory, OUT / "trajectory.gif", samples=8)))

# %% [markdown]
# How far is each step's guess from the final sample? The digit's identity is settled in the first few steps;
# the remaining steps refine strokes. That is why generation takes several steps: one jump from pure noise
# gives the *average* of all plausible digits, a blur.

# %%
import matplotlib.pyplot as plt

final = trajectory[-1].x
distance = [float((step.denoised - final).pow(2).mean().sqrt()) for step in trajectory]
figure, axis = plt.subplots(figsize=(6, 3))
axis.plot(range(1, len(distance) + 1), distance, marker="o")
axis.set_xlabel("step")
axis.set_ylabel("RMS distance of x0 estimate\nto the final sample")
axis.grid(alpha=0.3)
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Samplers x steps: quality and time, measured
#
# The same 100 samples (10 per digit, the same seeds) in every cell; each cell titled with its Frechet distance,
# class accuracy and seconds. With 100 samples the FD has a floor well above zero (real digits score it too,
# printed in the title). The bundled model's card has the 500-sample table with DDPM at 1000 steps for
# reference. (`difflab viz samplers --steps 5,10,20`)

# %%
from difflab.viz.samplers import compare_samplers, plot_sampler_comparison

comparison = compare_samplers(bundled, ["ddim", "euler-ancestral", "dpmpp-2m"], [5, 10, 20], per_class=10, seed=0)
display(Image(filename=plot_sampler_comparison(comparison, OUT / "samplers-x-steps.png")))
display(Markdown(comparison.table()))

# %% [markdown]
# What to read off it: DPM-Solver++ at 5-10 steps is close to its 20-step result, while plain DDIM/Euler needs
# more steps for the same distance; the ancestral sampler keeps improving with steps because its fresh noise
# corrects earlier errors. Time grows linearly with the number of network calls.
#
# "DPM-Solver++ matches DDPM-1000 in about 20 steps" is half true on this model, and the half matters. The
# deterministic DPM-Solver++(2M) solves the probability-flow ODE well in 10-20 steps: more steps change little
# (at 100 steps it has converged). But the ODE's answer is not DDPM-1000's: with the model's errors and guidance
# 3 it draws less varied digits. Measured on 100 samples (`bench/results/samplers-learned.md`), in the feature
# space of a small digit classifier (as FID uses Inception's): DDPM-1000 29.3; DPM-Solver++(2M) 20 steps 49.3
# (1.69x), 100 steps 58.4 (2.0x), recall 0.72 against DDPM-1000's 0.80; Karras sigmas or more steps do not close
# it. The stochastic form, DPM-Solver++(2M) SDE (`--sampler dpmpp-2m-sde`), re-injects noise every step like
# DDPM and reaches DDPM-1000 at 20 steps: 27.6 (0.94x) here, and 0.94x in raw-pixel FD on 500 samples
# (`bench/results/samplers-sde.md`). Lesson: a few-step solver is only as good as the equation it solves; for
# a small, imperfect model pick the SDE sampler, and measure against the 1000-step reference before trusting
# a sampler's reputation.
#
# ## Explain it back
#
# 1. *Why add noise in training?* The network learns to undo noise at every level, so that generation can start
#    from pure noise (section 1's grid, right edge) and walk back (section 5).
# 2. *Why does generation take many steps?* One step can only give the average of what the noise could have
#    been (the blurry first $\hat x_0$ in section 5); each step commits to a little more detail. Better solvers
#    need fewer (section 6), but a deterministic solver converges to the ODE's samples, which on this model are
#    less varied than DDPM-1000's; the SDE form of DPM-Solver++ matches DDPM-1000 in 20 steps.
#
# `difflab explain forward-process` and `difflab explain schedulers` walk through the same two ideas in a
# terminal.
