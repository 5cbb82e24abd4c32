"""Training the bundled text-to-image model from scratch, in phases, as generators of progress events.

Phase 1 (``train_vae``): an AutoencoderKL (Kingma & Welling 2014; Rombach et al. 2022) learns to squeeze
64x64x3 shapes images into 16x16x4 latents:

    z ~ q(z | x) = N(mu(x), sigma(x)^2),   loss = |x - D(z)| (or squared) + kl_weight * KL(q(z | x) || N(0, I))

then, as Stable Diffusion does, ``scaling_factor = 1 / std(z)`` is measured so the diffusion model sees unit-
variance latents.

Phase 1b (``train_decoder``, optional): the decoder alone trains on, from latents of the frozen encoder, as
Stable Diffusion's ft-MSE decoder did; latent space and scaling_factor stay as phase 1 left them.

Phase 2 (``train_text_encoder``, optional): the CLIPTextModel learns to read captions on its own, through
linear heads that predict every field a caption states from the mean of its output tokens (cross-entropy per
field, "not said" a class of its own). This stands in for the language pretraining real text encoders have; a
text encoder trained only jointly with the U-Net collapses the words the U-Net cannot use yet (see
``TextTrainingConfig``).

Phase 3 (``train_unet``): the VAE is frozen; a UNet2DConditionModel (and the CLIPTextModel, unless its rate is 0)
learn to denoise latents (Ho et al. 2020, alg. 1) given the caption, which is replaced by "" with probability
``caption_dropout`` so the same network also learns the unconditional model that classifier-free guidance needs
(Ho & Salimans 2022). "" is what StableDiffusionPipeline encodes as its default negative prompt.

    z_0 = scaling_factor * sample of q(z | x),  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || eps - unet(sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps, t, text_encoder(caption)) ||^2

Both phases use AdamW with warm-up and cosine decay, gradient clipping, checkpoints every ``checkpoint_every``
steps (safetensors) and ``resume``. Every random draw of step k comes from generators seeded with
(seed, phase, k), so a resumed run continues exactly as the uninterrupted one would have. The result is a plain
diffusers StableDiffusionPipeline folder that loads without difflab.

Layout of ``out``::

    config.json                  the recipe
    tokenizer/                   vocab.json, merges.txt, tokenizer_config.json
    vae/      training_state.safetensors, loss.csv, loss.png, model/ (diffusers AutoencoderKL, phase 1's result)
    decoder/  training_state.safetensors, loss.csv, loss.png, model/ (phase 1's AutoencoderKL, phase 1b's decoder)
    text/     training_state.safetensors, loss.csv, loss.png, model/ (transformers CLIPTextModel, phase 2's result)
    unet/     training_state.safetensors, loss.csv, loss.png, adherence.csv
    pipeline/                    StableDiffusionPipeline (EMA weights), refreshed at every U-Net checkpoint
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from difflab.core.checkpoint import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_bytes,
    optimizer_tensors,
    read_safetensors_with_metadata,
    restore_optimizer,
)
from difflab.core.train import optimizer_step, update_ema
from difflab.data.shapes import (
    BASE_SHAPES, COLORS, HELD_OUT_SHAPES, POSITIONS, SHAPES, SIZES, ShapeSpec, ShapesDataset, caption, parse_prompt,
)
from difflab.data.foreground import foreground_mask
from difflab.train.loop import save_pretrained_atomically
from difflab.train.masked_loss import latent_weight, weighted_mean, weighted_mse
from difflab.train.t2i_config import T2IConfig, VAETrainingConfig
from difflab.train.tokenizer import ALIASES, build_tokenizer

Phase = Literal["vae", "decoder", "text", "unet", "all"]
PHASES = ("vae", "decoder", "text", "unet", "all")
STATE_NAME = "training_state.safetensors"
VAE_MODEL = "model"  # out/vae/model: phase 1's AutoencoderKL as a diffusers folder
ARCHITECTURE_TABLES = ("data", "vae", "text_encoder", "unet", "noise")  # must match when resuming
# Distinct random streams per phase, so phase 2's step k never repeats phase 1's draws.
_PHASE_STREAM = {"vae": 1, "unet": 2, "scaling": 3, "text": 4, "decoder": 5}


@dataclass(frozen=True)
class T2IEvent:
    phase: str  # "vae", "text" or "unet"
    step: int  # steps done so far in this phase
    total: int
    loss: float
    learning_rate: float
    seconds: float  # wall time spent in this phase, resumed runs included
    checkpoint: Optional[Path] = None  # set on the events where a checkpoint was written
    adherence: Optional[dict[str, Optional[float]]] = None  # set where an evaluation ran: field -> accuracy


# --- models --------------------------------------------------------------------------------------------------


def new_vae(config: T2IConfig):
    """A fresh AutoencoderKL; latent side = resolution / 2 ** (levels - 1)."""
    from diffusers import AutoencoderKL

    levels = len(config.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae.block_out_channels, layers_per_block=config.vae.layers_per_block,
        latent_channels=config.vae.latent_channels, norm_num_groups=config.vae.norm_num_groups,
        sample_size=config.data.resolution, mid_block_add_attention=config.vae.mid_block_attention,
    )


def new_text_encoder(config: T2IConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    text = config.text_encoder
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings, projection_dim=text.hidden_size,
        # The pooled output reads the first eos position; the ids must be the tokenizer's, not CLIP's defaults.
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def new_unet(config: T2IConfig):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet.cross_attention))
    return UNet2DConditionModel(
        sample_size=config.latent_size, in_channels=config.vae.latent_channels, out_channels=config.vae.latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=config.unet.block_out_channels,
        layers_per_block=config.unet.layers_per_block, norm_num_groups=config.unet.norm_num_groups,
        cross_attention_dim=config.text_encoder.hidden_size, attention_head_dim=config.unet.attention_head_dim,
    )


def noise_scheduler(config: T2IConfig):
    """The DDPM training scheduler; the saved pipeline gets DPM-Solver++(2M) built from the same config."""
    from diffusers import DDPMScheduler

    noise = config.noise
    return DDPMScheduler(
        num_train_timesteps=noise.num_train_timesteps, beta_schedule=noise.beta_schedule,
        beta_start=noise.beta_start, beta_end=noise.beta_end, prediction_type=noise.prediction_type,
        clip_sample=False, steps_offset=1,  # as Stable Diffusion's; the pipeline warns and rewrites 0
    )


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L, D) text embeddings exactly as StableDiffusionPipeline.encode_prompt makes them (no clip skip)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # (B, L)
    return text_encoder(ids.to(text_encoder.device))[0]  # last_hidden_state (B, L, D)


# --- data ----------------------------------------------------------------------------------------------------


def _generator(config: T2IConfig, stream: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((config.seed * 8 + _PHASE_STREAM[stream]) * 1_000_003 + step)


def draw_batch(dataset: ShapesDataset, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """(B, 3, H, W) images in [-1, 1] and their captions, at indices drawn from ``generator``."""
    index = torch.randint(0, len(dataset), (batch_size,), generator=generator).tolist()
    items = [dataset[i] for i in index]
    return torch.stack([item["image"] for item in items]), [item["caption"] for item in items]


_ALIASES_OF: dict[str, list[str]] = {}
for _alias, _canonical in sorted(ALIASES.items()):
    _ALIASES_OF.setdefault(_canonical, []).append(_alias)


def augment_captions(captions: Sequence[str], probability: float, dropout: float, generator: torch.Generator) -> list[str]:
    """Swap words for prompt aliases with ``probability``; replace whole captions by "" with ``dropout``."""
    out = []
    for text in captions:
        if probability > 0:
            tokens = text.replace(",", " ,").split(" ")
            for i, token in enumerate(tokens):
                aliases = _ALIASES_OF.get(token)
                if aliases and torch.rand((), generator=generator).item() < probability:
                    tokens[i] = aliases[int(torch.randint(0, len(aliases), (), generator=generator))]
            text = " ".join(tokens).replace(" ,", ",")
        out.append(text)
    dropped = torch.rand(len(out), generator=generator) < dropout
    return ["" if drop else text for text, drop in zip(out, dropped.tolist())]


def evaluation_prompts(n: int, seed: int = 0, shapes: Sequence[str] = BASE_SHAPES) -> list[str]:
    """``n`` full-caption prompts cycling every shape x colour pair; background, position and size from ``seed``."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        shape, color = shapes[i % len(shapes)], COLORS[(i // len(shapes)) % len(COLORS)]
        backgrounds = [c for c in COLORS if c != color]
        spec = ShapeSpec(shape, color, backgrounds[rng.integers(len(backgrounds))],
                         POSITIONS[rng.integers(len(POSITIONS))], SIZES[rng.integers(len(SIZES))])
        prompts.append(caption(spec, rng, template="full"))
    return prompts


# --- training state on disk ----------------------------------------------------------------------------------


@dataclass
class _State:
    modules: dict[str, torch.nn.Module]  # trained modules by name
    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.nn.Module] = field(default_factory=dict)
    step: int = 0
    seconds: float = 0.0
    rows: list[list[float]] = field(default_factory=list)  # loss.csv rows: step, loss, extras


def _save_state(folder: Path, state: _State, header: Sequence[str]) -> None:
    tensors = {}
    for prefix, group in (("model", state.modules), ("ema", state.ema)):
        for name, module in group.items():
            tensors.update({f"{prefix}.{name}.{k}": v for k, v in module.state_dict().items()})
    optimizer_state, metadata = optimizer_tensors(state.optimizer)
    tensors.update(optimizer_state)
    metadata.update(step=str(state.step), seconds=repr(state.seconds))
    # Shared storage (tied weights) must be cloned for safetensors.
    atomic_save_safetensors({k: v.clone() for k, v in tensors.items()}, folder / STATE_NAME, metadata=metadata)
    _write_losses(folder, header, state.rows)


def _load_state(folder: Path, state: _State) -> None:
    path = folder / STATE_NAME
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {str(path)!r} does not exist")
    tensors, metadata = read_safetensors_with_metadata(path)
    for prefix, group in (("model", state.modules), ("ema", state.ema)):
        for name, module in group.items():
            start = f"{prefix}.{name}."
            module.load_state_dict({k[len(start):]: v for k, v in tensors.items() if k.startswith(start)})
    restore_optimizer(state.optimizer, tensors, metadata)
    state.step = int(metadata["step"])
    state.seconds = float(metadata["seconds"])
    state.rows = [row for row in _read_losses(folder) if row[0] <= state.step]


def _write_losses(folder: Path, header: Sequence[str], rows: list[list[float]]) -> None:
    from difflab.viz.curves import plot_loss_curve

    lines = [",".join(header)] + [",".join([str(int(r[0]))] + [f"{v:.6f}" for v in r[1:]]) for r in rows]
    atomic_write_bytes(folder / "loss.csv", ("\n".join(lines) + "\n").encode())
    if rows:
        plot_loss_curve([(int(r[0]), r[1]) for r in rows], folder / "loss.png")


def _read_losses(folder: Path) -> list[list[float]]:
    path = folder / "loss.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [[float(v) for v in row.values()] for row in csv.DictReader(handle)]


def _prepare_out(config: T2IConfig, out: Path, resume: bool) -> None:
    """Write config.json; on resume, refuse a recipe whose architecture differs from the one in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        mine = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
        for table in ("seed", *ARCHITECTURE_TABLES):
            if saved.get(table) != mine.get(table):
                raise ValueError(f"{table} differs from the recipe already in {str(out)!r}; "
                                 f"use a new --out folder or the same config")
    atomic_write_bytes(path, (json.dumps(config.to_dict(), indent=2) + "\n").encode())


def _check_fresh(folder: Path, resume: bool) -> None:
    if not resume and (folder / STATE_NAME).is_file():
        raise ValueError(f"{str(folder)!r} already holds a training run; pass resume (--resume) or use a new --out")


def load_tokenizer(config: T2IConfig, out: Path):
    return build_tokenizer(out / "tokenizer", config.text_encoder.max_position_embeddings)


# --- phase 1: the autoencoder --------------------------------------------------------------------------------


def train_vae(config: T2IConfig, out: str | Path, *, resume: bool = False) -> Iterator[T2IEvent]:
    """Train the AutoencoderKL, yielding an event per step; ends by saving ``out/vae/model`` with its scaling_factor."""
    out = Path(out)
    folder = out / "vae"
    train_config = config.vae_training
    _prepare_out(config, out, resume)
    _check_fresh(folder, resume)
    torch.manual_seed(config.seed)  # the initial weights
    vae = new_vae(config).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay)
    state = _State({"vae": vae}, optimizer)
    if resume and (folder / STATE_NAME).is_file():
        _load_state(folder, state)
    dataset = ShapesDataset(config.data.dataset_size, config.seed, config.data.shapes, config.data.resolution)
    header = ("step", "loss", "reconstruction", "kl")
    started = time.perf_counter() - state.seconds

    while state.step < train_config.steps:
        # 1. This step's batch and posterior sample, from this step's generator
        generator = _generator(config, "vae", state.step)
        torch.manual_seed(config.seed * 1_000_003 + state.step)
        x, _ = draw_batch(dataset, train_config.batch_size, generator)  # (B, 3, H, W)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)  # (B, C, H/f, W/f)
        reconstruction = vae.decode(z).sample  # (B, 3, H, W)

        # 2. Loss: per-pixel reconstruction + kl_weight * KL per latent element
        reconstruction_loss = weighted_reconstruction_loss(train_config, reconstruction, x)
        kl = posterior.kl().mean() / z[0].numel()
        loss = reconstruction_loss + train_config.kl_weight * kl
        learning_rate = optimizer_step(optimizer, loss, vae.parameters(), state.step, train_config)

        state.step += 1
        state.seconds = time.perf_counter() - started
        state.rows.append([state.step, loss.item(), reconstruction_loss.item(), kl.item()])
        written = None
        if state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps:
            _save_state(folder, state, header)
            written = folder
        if state.step == train_config.steps:
            _save_vae_model(config, vae, folder / VAE_MODEL)
        yield T2IEvent("vae", state.step, train_config.steps, loss.item(), learning_rate, state.seconds, written)
    if not (folder / VAE_MODEL).is_dir():  # resumed after the last step, before the model was saved
        _save_vae_model(config, vae, folder / VAE_MODEL)


def weighted_reconstruction_loss(train_config: VAETrainingConfig, reconstruction: torch.Tensor,
                                 x: torch.Tensor) -> torch.Tensor:
    """Mean L1 (or squared) error per pixel and channel, a foreground pixel counting 1 + foreground_weight times."""
    error = (reconstruction - x).abs() if train_config.reconstruction == "l1" else (reconstruction - x).pow(2)
    return weighted_mean(error, 1 + train_config.foreground_weight * foreground_mask(x))  # weight (B, 1, H, W)


def latent_weighted_mse(prediction: torch.Tensor, target: torch.Tensor, x: torch.Tensor,
                        foreground_weight: float) -> torch.Tensor:
    """Mean squared error over latents, a latent pixel under the shape of image ``x`` counting 1 + weight times
    (train/masked_loss.py: the mask from the border colour, max-pooled to the latent grid)."""
    if not foreground_weight:
        return weighted_mse(prediction, target, None)
    return weighted_mse(prediction, target, latent_weight(foreground_mask(x), prediction.shape[-2:], foreground_weight))


@torch.no_grad()
def measure_scaling_factor(config: T2IConfig, vae) -> float:
    """1 / std of posterior samples over ``scaling_batches`` batches, as Stable Diffusion's 0.18215 was found."""
    dataset = ShapesDataset(config.data.dataset_size, config.seed, config.data.shapes, config.data.resolution)
    samples = []
    for batch in range(config.vae_training.scaling_batches):
        generator = _generator(config, "scaling", batch)
        x, _ = draw_batch(dataset, config.vae_training.batch_size, generator)
        samples.append(vae.encode(x).latent_dist.sample(generator=generator))
    return float(1.0 / torch.cat(samples).std())


def _save_vae_model(config: T2IConfig, vae, folder: Path) -> None:
    vae.eval()
    vae.register_to_config(scaling_factor=measure_scaling_factor(config, vae))
    save_pretrained_atomically(vae, folder)


def load_trained_vae(out: str | Path):
    from diffusers import AutoencoderKL

    folder = Path(out) / "vae" / VAE_MODEL
    if not (folder / "config.json").is_file():
        raise ValueError(f"no trained VAE in {str(folder)!r}; run the vae phase first (--phase vae or all)")
    return AutoencoderKL.from_pretrained(str(folder)).eval().requires_grad_(False)


# --- phase 1b: the decoder alone, on the frozen encoder's latents ---------------------------------------------

DECODER_MODEL = "model"  # out/decoder/model: phase 1's AutoencoderKL with phase 1b's decoder


def train_decoder(config: T2IConfig, out: str | Path, *, resume: bool = False) -> Iterator[T2IEvent]:
    """Train the VAE's decoder (and post_quant_conv) on posterior samples of the frozen encoder, with phase 1's
    reconstruction loss; saves ``out/decoder/model`` and, where the U-Net phase already wrote ``out/pipeline``,
    puts it there as the pipeline's VAE. The latents, and so the U-Net, are untouched (see DecoderTrainingConfig)."""
    out = Path(out)
    folder = out / "decoder"
    train_config = config.decoder_training
    if not train_config.steps:
        raise ValueError("decoder_training.steps is 0 in this recipe: there is no decoder phase to run")
    _prepare_out(config, out, resume)
    _check_fresh(folder, resume)
    vae = load_trained_vae(out).train()
    decoder = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    decoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    state = _State({"decoder": decoder}, optimizer)
    if resume and (folder / STATE_NAME).is_file():
        _load_state(folder, state)
    dataset = ShapesDataset(config.data.dataset_size, config.seed, config.data.shapes, config.data.resolution)
    started = time.perf_counter() - state.seconds

    while state.step < train_config.steps:
        generator = _generator(config, "decoder", state.step)
        x, _ = draw_batch(dataset, train_config.batch_size, generator)  # (B, 3, H, W)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=generator)  # what the U-Net's latents imitate
        loss = weighted_reconstruction_loss(config.vae_training, vae.decode(z).sample, x)
        learning_rate = optimizer_step(optimizer, loss, decoder.parameters(), state.step, train_config)

        state.step += 1
        state.seconds = time.perf_counter() - started
        state.rows.append([state.step, loss.item()])
        written = None
        if state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps:
            _save_state(folder, state, ("step", "loss"))
            written = folder
        yield T2IEvent("decoder", state.step, train_config.steps, loss.item(), learning_rate, state.seconds, written)
    _save_decoder_model(vae, out)


def _save_decoder_model(vae, out: Path) -> None:
    vae.eval()  # scaling_factor is phase 1's: the encoder, whose latents it normalises, did not change
    save_pretrained_atomically(vae, out / "decoder" / DECODER_MODEL)
    if (out / "pipeline" / "model_index.json").is_file():
        save_pretrained_atomically(vae, out / "pipeline" / "vae")


def load_pipeline_vae(out: str | Path):
    """The VAE a run's pipeline ships: phase 1's, with phase 1b's decoder where that phase ran."""
    from diffusers import AutoencoderKL

    folder = Path(out) / "decoder" / DECODER_MODEL
    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(str(folder)).eval().requires_grad_(False)
    return load_trained_vae(out)


# --- phase 2: the text encoder learns to read captions -------------------------------------------------------

# The fields a caption can state, and their values; class 0 of each head is "the caption does not say".
CAPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "color": COLORS, "background": COLORS, "position": POSITIONS, "size": SIZES,
}
TEXT_MODEL = "model"  # out/text/model: phase 2's CLIPTextModel as a transformers folder


def caption_heads(hidden_size: int) -> torch.nn.ModuleDict:
    """One linear classifier per caption field over the mean output token (class 0 = not said)."""
    return torch.nn.ModuleDict({name: torch.nn.Linear(hidden_size, len(values) + 1)
                                for name, values in CAPTION_FIELDS.items()})


def caption_labels(captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """(B,) class per field, read with the same parser the adherence analyzer uses; 0 where a caption is silent."""
    specs = [parse_prompt(text) for text in captions]
    return {name: torch.tensor([values.index(getattr(spec, name)) + 1 if getattr(spec, name) else 0
                                for spec in specs])
            for name, values in CAPTION_FIELDS.items()}


def caption_reading_loss(text: torch.Tensor, heads: torch.nn.ModuleDict,
                         labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Summed cross-entropy of every head on (B, L, D) text embeddings, and the fraction of fields read right.

    The mean runs over all L positions, padding included: CLIP's attention is causal, so the padding tokens
    after the caption are the ones that have seen all of it, and the U-Net's cross-attention can read them."""
    pooled = text.mean(dim=1)  # (B, D)
    loss, correct, total = text.new_zeros(()), 0, 0
    for name, head in heads.items():
        logits = head(pooled)  # (B, classes)
        loss = loss + torch.nn.functional.cross_entropy(logits, labels[name])
        correct += int((logits.argmax(-1) == labels[name]).sum())
        total += len(labels[name])
    return loss, correct / total


def train_text_encoder(config: T2IConfig, out: str | Path, *, resume: bool = False) -> Iterator[T2IEvent]:
    """Train the CLIPTextModel to read captions, yielding an event per step; ends by saving ``out/text/model``."""
    out = Path(out)
    folder = out / "text"
    train_config = config.text_training
    _prepare_out(config, out, resume)
    _check_fresh(folder, resume)
    tokenizer = load_tokenizer(config, out)
    torch.manual_seed(config.seed)  # the initial weights: the same draw train_unet makes without this phase
    text_encoder = new_text_encoder(config, tokenizer).train()
    heads = caption_heads(config.text_encoder.hidden_size)
    optimizer = torch.optim.AdamW([*text_encoder.parameters(), *heads.parameters()],
                                  lr=train_config.learning_rate, weight_decay=train_config.weight_decay)
    state = _State({"text_encoder": text_encoder, "heads": heads}, optimizer)
    if resume and (folder / STATE_NAME).is_file():
        _load_state(folder, state)
    shapes = tuple(config.data.shapes) + (HELD_OUT_SHAPES if train_config.held_out_captions else ())
    dataset = ShapesDataset(config.data.dataset_size, config.seed, tuple(dict.fromkeys(shapes)), config.data.resolution)
    header = ("step", "loss", "fields_read")
    started = time.perf_counter() - state.seconds

    while state.step < train_config.steps:
        # 1. This step's captions (with the aliases the U-Net phase will use; none dropped: "" says nothing)
        generator = _generator(config, "text", state.step)
        index = torch.randint(0, len(dataset), (train_config.batch_size,), generator=generator).tolist()
        captions = [dataset.spec_and_caption(i)[1] for i in index]
        captions = augment_captions(captions, config.unet_training.alias_probability, 0.0, generator)

        # 2. Read every field back from the embeddings the U-Net will attend to
        loss, read = caption_reading_loss(encode_prompts(tokenizer, text_encoder, captions), heads,
                                          caption_labels(captions))
        learning_rate = optimizer_step(optimizer, loss, [*text_encoder.parameters(), *heads.parameters()], state.step,
                                       train_config)

        state.step += 1
        state.seconds = time.perf_counter() - started
        state.rows.append([state.step, loss.item(), read])
        written = None
        if state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps:
            _save_state(folder, state, header)
            written = folder
        if state.step == train_config.steps:
            save_pretrained_atomically(text_encoder.eval(), folder / TEXT_MODEL)
        yield T2IEvent("text", state.step, train_config.steps, loss.item(), learning_rate, state.seconds, written)
    if not (folder / TEXT_MODEL).is_dir():  # resumed after the last step, before the model was saved
        save_pretrained_atomically(text_encoder.eval(), folder / TEXT_MODEL)


def load_trained_text_encoder(out: str | Path):
    from transformers import CLIPTextModel

    folder = Path(out) / "text" / TEXT_MODEL
    if not (folder / "config.json").is_file():
        raise ValueError(f"no trained text encoder in {str(folder)!r}; run the text phase first (--phase text or all)")
    return CLIPTextModel.from_pretrained(str(folder))


# --- phase 3: U-Net (and text encoder) -----------------------------------------------------------------------


def train_unet(config: T2IConfig, out: str | Path, *, resume: bool = False) -> Iterator[T2IEvent]:
    """Train U-Net + text encoder on frozen-VAE latents, yielding an event per step; saves ``out/pipeline``."""
    out = Path(out)
    folder = out / "unet"
    train_config = config.unet_training
    _prepare_out(config, out, resume)
    _check_fresh(folder, resume)
    vae = load_pipeline_vae(out)  # phase 1's encoder either way; phase 1b's decoder, where it ran, is what ships
    scaling_factor = vae.config.scaling_factor
    tokenizer = load_tokenizer(config, out)
    scheduler = noise_scheduler(config)

    # 1. Models, EMA copies and one AdamW over the trained networks. The text encoder comes from the text phase
    #    when it ran, and may get its own rate; at rate 0 it is frozen, and saved as it came.
    torch.manual_seed(config.seed)
    unet, text_encoder = new_unet(config).train(), new_text_encoder(config, tokenizer).train()
    if config.text_training.steps:
        text_encoder = load_trained_text_encoder(out).train()
    text_rate = train_config.text_encoder_learning_rate
    modules = {"unet": unet} if text_rate == 0 else {"unet": unet, "text_encoder": text_encoder}
    ema = {name: copy.deepcopy(module).eval().requires_grad_(False) for name, module in modules.items()}
    if text_rate == 0:
        text_encoder.eval().requires_grad_(False)
    text_scale = (text_rate or train_config.learning_rate) / train_config.learning_rate
    optimizer = torch.optim.AdamW(
        [{"params": list(module.parameters()), "lr_scale": text_scale if name == "text_encoder" else 1.0}
         for name, module in modules.items()],
        lr=train_config.learning_rate, weight_decay=train_config.weight_decay,
    )
    state = _State(modules, optimizer, ema)
    if resume and (folder / STATE_NAME).is_file():
        _load_state(folder, state)
    dataset = ShapesDataset(config.data.dataset_size, config.seed, config.data.shapes, config.data.resolution)
    parameters = [p for module in modules.values() for p in module.parameters()]
    started = time.perf_counter() - state.seconds

    while state.step < train_config.steps:
        # 2. This step's batch, latents, captions, timesteps and noise, all from this step's generator
        generator = _generator(config, "unet", state.step)
        torch.manual_seed(config.seed * 1_000_003 + state.step)
        x, captions = draw_batch(dataset, train_config.batch_size, generator)  # (B, 3, H, W)
        with torch.no_grad():
            z_0 = vae.encode(x).latent_dist.sample(generator=generator) * scaling_factor  # (B, C, h, w)
        captions = augment_captions(captions, train_config.alias_probability, train_config.caption_dropout, generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=generator)
        eps = torch.randn(z_0.shape, generator=generator)

        # 3. Denoising loss and the optimizer step
        z_t = scheduler.add_noise(z_0, eps, t)
        target = eps if config.noise.prediction_type == "epsilon" else scheduler.get_velocity(z_0, eps, t)
        with torch.set_grad_enabled(text_rate != 0):
            text = encode_prompts(tokenizer, text_encoder, captions)  # (B, L, D)
        prediction = unet(z_t, t, encoder_hidden_states=text).sample  # (B, C, h, w)
        loss = latent_weighted_mse(prediction, target, x, train_config.foreground_weight)
        learning_rate = optimizer_step(optimizer, loss, parameters, state.step, train_config)

        # 4. EMA with warm-up (decay = min(d, (1 + k) / (10 + k))), then bookkeeping
        decay = min(train_config.ema_decay, (1 + state.step) / (10 + state.step))
        for name, module in modules.items():
            update_ema(ema[name], module, decay)
        state.step += 1
        state.seconds = time.perf_counter() - started
        state.rows.append([state.step, loss.item()])

        written, adherence = None, None
        last = state.step == train_config.steps
        if state.step % train_config.checkpoint_every == 0 or last:
            _save_state(folder, state, ("step", "loss"))
            save_pipeline(out / "pipeline", vae, ema.get("text_encoder", text_encoder), tokenizer, ema["unet"], config)
            written = out / "pipeline"
            every = config.eval.every
            if config.eval.num_prompts and (last or (every and state.step % every == 0)):
                adherence = _evaluate_checkpoint(config, out, state.step)
        yield T2IEvent("unet", state.step, train_config.steps, loss.item(), learning_rate, state.seconds, written,
                       adherence)


def train_t2i(config: T2IConfig, out: str | Path, *, phase: Phase = "all", resume: bool = False) -> Iterator[T2IEvent]:
    """The phases in turn (or one of them); the decoder and text phases only where they have steps. With
    ``resume``, finished VAE, decoder and text phases are skipped."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}; got {phase!r}")
    out = Path(out)
    if phase in ("vae", "all"):
        done = (out / "vae" / VAE_MODEL).is_dir() and _saved_step(out / "vae") >= config.vae_training.steps
        if not (resume and done and phase == "all"):
            yield from train_vae(config, out, resume=resume)
    if phase == "decoder" or (phase == "all" and config.decoder_training.steps):
        done = (out / "decoder" / DECODER_MODEL).is_dir() and _saved_step(out / "decoder") >= config.decoder_training.steps
        if not (resume and done and phase == "all"):
            yield from train_decoder(config, out, resume=resume)
    if phase == "text" and not config.text_training.steps:
        raise ValueError("text_training.steps is 0 in this recipe: there is no text phase to run")
    if phase == "text" or (phase == "all" and config.text_training.steps):
        done = (out / "text" / TEXT_MODEL).is_dir() and _saved_step(out / "text") >= config.text_training.steps
        if not (resume and done and phase == "all"):
            yield from train_text_encoder(config, out, resume=resume)
    if phase in ("unet", "all"):
        yield from train_unet(config, out, resume=resume)


def _saved_step(folder: Path) -> int:
    from safetensors import safe_open

    if not (folder / STATE_NAME).is_file():
        return 0
    with safe_open(folder / STATE_NAME, "pt") as handle:
        return int(handle.metadata()["step"])


# --- the result: a StableDiffusionPipeline folder, and its evaluation ----------------------------------------


def build_pipeline(vae, text_encoder, tokenizer, unet, config: T2IConfig):
    """A StableDiffusionPipeline of the given parts with DPM-Solver++(2M) over the training noise schedule."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler(config).config)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def save_pipeline(folder: str | Path, vae, text_encoder, tokenizer, unet, config: T2IConfig) -> Path:
    """Save a standard diffusers folder (safetensors) that ``StableDiffusionPipeline.from_pretrained`` loads."""
    folder = Path(folder)
    pipeline = build_pipeline(vae, text_encoder, tokenizer, unet, config)
    save_pretrained_atomically(pipeline, folder)
    # tokenizer.save_pretrained writes tokenizer.json only; vocab.json + merges.txt serve older transformers.
    source = Path(tokenizer.name_or_path)
    for name in ("vocab.json", "merges.txt"):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / "tokenizer" / name)
    return folder


def evaluate_pipeline(folder_or_pipe: Any, prompts: Sequence[str], seeds: Sequence[int] | int = 0,
                      guidance: float = 7.5, steps: int = 20, batch_size: int = 16):
    """Generate one image per prompt (image i with seed ``seeds[i]``, or ``seeds + i``) and score its adherence.

    ``folder_or_pipe`` is a StableDiffusionPipeline or a folder holding one; sampling uses DPM-Solver++(2M).
    Returns :class:`difflab.eval.adherence.AdherenceReport`.
    """
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from difflab.eval.adherence import score

    if isinstance(folder_or_pipe, (str, Path)):
        pipe = StableDiffusionPipeline.from_pretrained(str(folder_or_pipe))
    else:
        pipe = folder_or_pipe
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt, got {len(seeds)} seeds and {len(prompts)} prompts")
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        with torch.no_grad():
            images += pipe(list(prompts[chunk]), num_inference_steps=steps, guidance_scale=guidance,
                           generator=generators, output_type="pil").images
    return score(images, list(prompts))


def _evaluate_checkpoint(config: T2IConfig, out: Path, step: int) -> dict[str, Optional[float]]:
    prompts = evaluation_prompts(config.eval.num_prompts, config.eval.seed, config.data.shapes)
    report = evaluate_pipeline(out / "pipeline", prompts, config.eval.seed, config.eval.guidance, config.eval.steps)
    accuracy = {**report.accuracy, "shape+color": report.shape_and_color_accuracy}
    path = out / "unet" / "adherence.csv"
    rows = [r for r in _read_csv(path) if int(r["step"]) < step]
    rows.append({"step": str(step), **{k: "" if v is None else f"{v:.4f}" for k, v in accuracy.items()}})
    lines = [",".join(rows[-1])] + [",".join(r.get(k, "") for k in rows[-1]) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return accuracy


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))
