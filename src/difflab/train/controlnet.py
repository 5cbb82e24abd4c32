"""Training a canny ControlNet for a Stable Diffusion-family model, as a generator of progress events.

A ControlNet (Zhang, Rao & Agrawala 2023) is a trainable copy of the U-Net's encoder whose outputs enter the
frozen U-Net through zero-initialised 1x1 convolutions, so step 0 is exactly the base model. Here the copy is
``ControlNetModel.from_unet`` of the base's own U-Net, and the training data is the procedural shapes world:
every image's control map is the canny edge map of that image (engine.control.canny, the same function that
preprocesses a user's picture). The loss is the base model's denoising loss with the ControlNet's residuals:

    z_0 ~ q(z | x) (cached VAE posteriors),  t ~ U{0..T-1},  eps ~ N(0, I),  c = canny(x) in [0, 1]
    loss = || target - unet(z_t, t, text, residuals = controlnet(z_t, t, text, c)) ||^2

with half of the captions replaced by the empty prompt (the paper's sec. 3.3). Only the ControlNet learns.
Every random draw of step k comes from a generator seeded with (seed, k), and the training state (weights,
AdamW moments, step) is saved as safetensors, so ``resume`` continues exactly as the uninterrupted run would.

Layout of ``out``::

    controlnet/                 diffusers ControlNetModel folder (config.json + safetensors): what the engine loads
    training.json               config, base model and its hash, steps, time, final loss, validation edge F1
    training_state.safetensors  ControlNet weights + optimizer state, for --resume
    loss.csv, loss.png          per-step loss and its curve
    validation/step-000250.png  control maps (top row) and the images drawn from them (bottom row)
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from difflab.core.checkpoint import atomic_write_bytes
from difflab.core.train import set_learning_rate, step_generator
from difflab.train.controlnet_config import ControlNetTrainConfig
from difflab.train.distributed import data_parallel
from difflab.train.loop import (
    RECORD_NAME, STATE_NAME, Run, check_out, encode_posteriors, load_state, save_pretrained_atomically, save_state,
)

CONTROLNET_DIR = "controlnet"
SUPPORTED_FAMILIES = ("sd",)
CONDITIONING_CHANNELS = (16, 32, 96, 256)  # diffusers' default ControlNet hint encoder; one stride-2 conv between


@dataclass(frozen=True)
class ControlNetEvent:
    step: int
    total: int
    loss: float
    learning_rate: float
    seconds: float
    checkpoint: Optional[Path] = None
    validation: Optional[Path] = None
    edge_f1: Optional[float] = None  # mean edge F1 of the validation images, where they were drawn


def new_controlnet(unet, vae_scale_factor: int):
    """``ControlNetModel.from_unet(unet)`` whose hint encoder shrinks the map by the VAE's factor: the map enters
    at image size and must land on the latent grid (4x for 64 px images on 16x16 latents, 8x for SD)."""
    from diffusers import ControlNetModel

    levels = round(math.log2(vae_scale_factor))
    if 2**levels != vae_scale_factor or not 1 <= levels <= len(CONDITIONING_CHANNELS) - 1:
        raise ValueError(f"base: a VAE factor of {vae_scale_factor} is not 2, 4 or 8; no ControlNet hint encoder fits")
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS[: levels + 1])


def load_base(config: ControlNetTrainConfig, device: str):
    """(frozen pipeline, resolved model) of the base."""
    from diffusers import StableDiffusionPipeline

    from difflab.engine.registry import resolve_model

    model = resolve_model(config.base)
    if model.family not in SUPPORTED_FAMILIES or model.single_file:
        raise ValueError(f"base: ControlNet training supports diffusers folders of the {', '.join(SUPPORTED_FAMILIES)} "
                         f"family; {config.base!r} is {'a single file' if model.single_file else model.family}")
    pipe = StableDiffusionPipeline.from_pretrained(str(model.path), use_safetensors=True, local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.vae, pipe.text_encoder, pipe.unet):
        part.requires_grad_(False).eval()
    return pipe.to(device), model


# --- data: shapes, their canny maps, cached posteriors and caption embeddings --------------------------------


@dataclass
class _Cache:
    mean: torch.Tensor  # (N, C, h, w) VAE posterior means, times scaling_factor
    std: torch.Tensor  # (N, C, h, w)
    maps: torch.Tensor  # (N, H, W) uint8 canny maps, 255 = edge
    caption_index: torch.Tensor  # (N,) row of each image's caption in embeddings
    embeddings: torch.Tensor  # (K, L, D) the K distinct captions, encoded once (the text encoder is frozen)
    empty: torch.Tensor  # (L, D) the empty prompt


def shape_sample(index: int, seed: int, resolution: int, low: int, high: int):
    """(image, canny map, caption) of sample ``index`` of the shapes world ``seed``."""
    from difflab.data.shapes import ShapesDataset, render
    from difflab.engine.control import canny

    spec, text, rng = ShapesDataset(index + 1, seed, resolution=resolution).spec_and_caption(index)
    image = render(spec, rng, resolution)
    return image, canny(image, low, high), text


@torch.no_grad()
def build_cache(pipe, config: ControlNetTrainConfig, resolution: int, device: str) -> _Cache:
    import numpy as np

    from difflab.data.shapes import image_to_tensor
    from difflab.train.lora import _encode

    images, maps, captions = [], [], []
    for index in range(config.num_images):
        image, control_map, text = shape_sample(index, config.data_seed, resolution, config.low, config.high)
        images.append(image_to_tensor(image))
        maps.append(torch.from_numpy(np.asarray(control_map.convert("L")).copy()))
        captions.append(text)
    pixels = torch.stack(images)  # (N, 3, H, W) in [-1, 1]
    mean, std = encode_posteriors(pipe.vae, pixels, device, chunk=64)
    distinct = list(dict.fromkeys(captions))
    row = {text: i for i, text in enumerate(distinct)}
    embeddings = torch.cat([_encode(pipe, distinct[i:i + 256]) for i in range(0, len(distinct), 256)])
    return _Cache(mean, std, torch.stack(maps),
                  torch.tensor([row[text] for text in captions]), embeddings, _encode(pipe, [""])[0])


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class _Run(Run):
    edge_f1: Optional[float] = None  # of the last validation images


def train_controlnet(config: ControlNetTrainConfig, out: str | Path, *, resume: bool = False,
                     device: Optional[str] = None) -> Iterator[ControlNetEvent]:
    """Train a canny ControlNet for ``config.base``, yielding an event per step; writes the layout above.

    Under ``accelerate launch``/``torchrun`` with several processes, each trains on its rows of every batch
    (train/distributed.py) on the launcher's device; only the main process writes files and yields events."""
    from diffusers import DDPMScheduler

    from difflab.engine.device import choose_placement

    out = Path(out)
    parallel = data_parallel(config.batch_size)
    device = parallel.device or device or choose_placement().device
    check_out(config, out, resume, "ControlNet")
    pipe, model = load_base(config, device)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the base's training noise schedule
    torch.manual_seed(config.seed)
    controlnet = new_controlnet(pipe.unet, pipe.vae_scale_factor).to(device)
    cache = build_cache(pipe, config, resolution, device)

    # 1. AdamW over the ControlNet's weights; the base stays frozen
    params = dict(controlnet.named_parameters())
    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    run = _Run()
    if resume and (out / STATE_NAME).is_file():
        load_state(out, _state_tensors(params), optimizer, run)
        record = out / RECORD_NAME
        if record.is_file():
            run.edge_f1 = json.loads(record.read_text()).get("validation_edge_f1")
    parallel.broadcast_parameters(params.values())
    controlnet.train()
    started = time.perf_counter() - run.seconds

    while run.step < config.steps:
        # 2. This step's images, posterior samples, timesteps, noise and dropped prompts, from this step's generator:
        #    drawn for the whole batch, of which a data-parallel process keeps its rows
        generator = step_generator(config.seed, run.step)
        batch_size, rows = config.batch_size, parallel.rows(config.batch_size)
        whole = torch.randint(0, len(cache.maps), (batch_size,), generator=generator)
        latent_noise = torch.randn(cache.mean[whole].shape, generator=generator)[rows]
        index = whole[rows]
        z_0 = cache.mean[index] + cache.std[index] * latent_noise.to(device)  # (b, C, h, w)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)[rows].to(device)
        eps = torch.randn((batch_size, *z_0.shape[1:]), generator=generator)[rows].to(device)
        dropped = (torch.rand(batch_size, generator=generator) < config.empty_prompt_probability)[rows].to(device)
        text = torch.where(dropped[:, None, None], cache.empty, cache.embeddings[cache.caption_index[index]])
        condition = (cache.maps[index].float() / 255)[:, None].expand(-1, 3, -1, -1).to(device)  # (B, 3, H, W)

        # 3. Denoising loss of the frozen U-Net plus the ControlNet's residuals
        z_t = scheduler.add_noise(z_0, eps, t)
        target = eps if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z_0, eps, t)
        down, middle = controlnet(z_t, t, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False)
        prediction = pipe.unet(z_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=middle).sample  # (B, C, h, w)
        loss = (prediction.float() - target.float()).pow(2).mean()
        # core.train.optimizer_step's AdamW step, with the gradients averaged across processes before clipping
        learning_rate = set_learning_rate(optimizer, run.step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(params.values())
        torch.nn.utils.clip_grad_norm_(params.values(), config.grad_clip)
        optimizer.step()

        # 4. Bookkeeping, checkpoints and validation images: the main process's
        run.step += 1
        run.seconds = time.perf_counter() - started
        run.rows.append((run.step, parallel.mean(loss).item()))  # the whole batch's loss
        if not parallel.is_main:
            continue
        last = run.step == config.steps
        written = validation = None
        if (config.validate_every and run.step % config.validate_every == 0) or last:
            validation, run.edge_f1 = write_validation(pipe, controlnet, config, out, run.step, resolution)
            controlnet.train()
        if run.step % config.checkpoint_every == 0 or last:
            save_state(out, _state_tensors(params), optimizer, run)
            save_controlnet(controlnet, config, out, model, run, resolution)
            written = out / CONTROLNET_DIR
        yield ControlNetEvent(run.step, config.steps, run.rows[-1][1], learning_rate, run.seconds, written, validation,
                              run.edge_f1 if validation else None)
    parallel.finish()


def _state_tensors(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.nn.Parameter]:
    """The ControlNet's weights under their training-state keys, ``controlnet.{name}``."""
    return {f"controlnet.{name}": p for name, p in params.items()}


# --- the results: the ControlNet folder, the record, validation images --------------------------------------


def save_controlnet(controlnet, config: ControlNetTrainConfig, out: Path, model, run: _Run, resolution: int) -> Path:
    """The diffusers folder, swapped in whole (write beside, then rename), and the JSON record."""
    final = out / CONTROLNET_DIR
    save_pretrained_atomically(controlnet, final)
    record = training_record(config, model, run, resolution)
    atomic_write_bytes(out / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
    return final


def training_record(config: ControlNetTrainConfig, model, run: _Run, resolution: int) -> dict:
    import diffusers

    from difflab import __version__
    from difflab.engine.outputs import model_hash

    return {
        "kind": "controlnet",
        "control": "canny",
        "config": config.to_dict(),
        "base": {"name": config.base, "path": str(model.path), "family": model.family,
                 "hash": model_hash(model.path)},
        "resolution": resolution,
        "steps_done": run.step,
        "seconds": round(run.seconds, 2),
        "final_loss": run.rows[-1][1] if run.rows else None,
        "validation_edge_f1": run.edge_f1,
        "edge_f1_tolerance_px": _tolerance(),
        "versions": {"difflab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
    }


def _tolerance() -> float:
    from difflab.eval.edges import DEFAULT_TOLERANCE

    return DEFAULT_TOLERANCE


def validation_set(config: ControlNetTrainConfig, resolution: int) -> list[tuple]:
    """(image, map, caption) of held-out shapes: another seed of the shapes world than the training data's."""
    return [shape_sample(i, config.data_seed + 10_000, resolution, config.low, config.high)
            for i in range(config.validation_images)]


@torch.no_grad()
def write_validation(pipe, controlnet, config: ControlNetTrainConfig, out: Path, step: int,
                     resolution: int) -> tuple[Path, float]:
    """Maps over images drawn from them (seed = config.seed + i), and their mean edge F1 against the maps."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline

    from difflab.eval.edges import image_edge_f1, mean_f1
    from difflab.viz.grid import make_grid, png_bytes

    samples = validation_set(config, resolution)
    controlnet.eval()
    controlled = StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=controlnet,
        scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    controlled.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(samples))]
    images = controlled([caption for _, _, caption in samples], image=[m for _, m, _ in samples],
                        num_inference_steps=config.validation_steps, guidance_scale=config.validation_guidance,
                        generator=generators).images
    f1 = mean_f1([image_edge_f1(image, m) for image, (_, m, _) in zip(images, samples)])
    path = out / "validation" / f"step-{step:06d}.png"
    grid = make_grid([m for _, m, _ in samples] + list(images), columns=len(samples), scale=2)
    atomic_write_bytes(path, png_bytes(grid))
    return path, f1
