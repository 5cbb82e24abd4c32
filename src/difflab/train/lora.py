"""LoRA fine-tuning of a Stable Diffusion 1.x, SDXL or Flux pipeline, as a generator of progress events.

LoRA (Hu et al. 2021) freezes a layer's weight W and learns a low-rank update, ``W + (alpha / r) * B A`` with
A (r x in) and B (out x r), B starting at zero so step 0 is the base model. As diffusers'
``examples/text_to_image/train_text_to_image_lora.py`` does, peft adapters go on the U-Net's attention
projections (to_q, to_k, to_v, to_out.0) and, optionally, the text encoder's (q/k/v/out_proj); the loss is the
base model's denoising loss on the LoRA's images:

    z_0 = scaling_factor * sample of q(z | x) (cached VAE posteriors),  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || target - unet(sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps, t, text_encoder(caption)) ||^2

with target eps or v per the base model's scheduler; SDXL's U-Net also takes the pooled text and the size/crop
numbers, and Flux's transformer is trained by flow matching instead (train/flow_matching.py). Every random draw
of step k comes from a generator seeded with (seed, k), and the training state (LoRA weights, AdamW moments,
step) is saved as safetensors, so ``resume`` continues exactly as the uninterrupted run would have.

Layout of ``out``::

    pytorch_lora_weights.safetensors   diffusers format: pipe.load_lora_weights(out) loads it
    kohya/<out name>.safetensors       kohya format (lora_unet_..., .alpha, ss_* metadata): A1111, Forge, ComfyUI
    training.json                      how it was trained: config, base model hash, steps, time, final loss
    training_state.safetensors         LoRA weights + optimizer state, for --resume
    loss.csv, loss.png                 per-step loss and its curve
    validation/step-000100.png         validation images (one column per prompt)
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from difflab.core.checkpoint import atomic_save_safetensors, atomic_write_bytes
from difflab.core.train import set_learning_rate, step_generator
from difflab.train.distributed import SINGLE, DataParallel, data_parallel
from difflab.train.lora_config import FLUX_NETWORKS, TEXT_ENCODER_TARGETS, UNET_NETWORKS, LoraTrainConfig
from difflab.train.loop import (
    RECORD_NAME, STATE_NAME, Run, check_out, encode_posteriors, load_state, save_state,
)
from difflab.train.masked_loss import min_snr_weight, weighted_mse

DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default name
# family -> diffusers pipeline class (Flux: a transformer trained by flow matching, train/flow_matching.py)
PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}
SUPPORTED_FAMILIES = tuple(PIPELINE_CLASSES)


@dataclass(frozen=True)
class LoraEvent:
    step: int  # steps done so far
    total: int
    loss: float
    learning_rate: float
    seconds: float  # wall time of the run, resumed parts included
    checkpoint: Optional[Path] = None  # set where the LoRA files and training state were written
    validation: Optional[Path] = None  # set where a validation grid was written


# --- the base model with adapters ----------------------------------------------------------------------------


def load_base(config: LoraTrainConfig, device: str = "cpu"):
    """(pipeline, resolved model) of the base, frozen, with fresh LoRA adapters seeded by ``config.seed``."""
    import diffusers

    from difflab.engine.registry import resolve_model

    model = resolve_model(config.base)
    if model.family not in SUPPORTED_FAMILIES:
        raise ValueError(f"base: LoRA training supports the {', '.join(SUPPORTED_FAMILIES)} families for now; "
                         f"{config.base!r} is {model.family}")
    if model.family == "flux":
        _check_flux_settings(config)
    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[model.family])
    if model.single_file:
        pipe = pipeline_class.from_single_file(str(model.path), local_files_only=True)
    else:
        extra = dict(safety_checker=None, requires_safety_checker=False) if model.family == "sd" else {}
        pipe = pipeline_class.from_pretrained(str(model.path), use_safetensors=True, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.vae, denoiser(pipe), *text_encoders(pipe).values()):
        part.requires_grad_(False).eval()
    torch.manual_seed(config.seed)  # the LoRA A matrices' initialisation
    networks = FLUX_NETWORKS if model.family == "flux" else UNET_NETWORKS
    denoiser(pipe).add_adapter(_lora_config(config, networks[config.network]))
    if config.text_encoder_lora:
        for encoder in adapted_text_encoders(pipe).values():
            encoder.add_adapter(_lora_config(config, TEXT_ENCODER_TARGETS))
    if config.gradient_checkpointing:
        denoiser(pipe).enable_gradient_checkpointing()
        if config.text_encoder_lora:
            for encoder in adapted_text_encoders(pipe).values():
                # transformers 5 renamed gradient_checkpointing_enable (the old name warns)
                enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
                enable()
    return pipe.to(device), model


def _check_flux_settings(config: LoraTrainConfig) -> None:
    if config.network not in FLUX_NETWORKS:
        raise ValueError(f"network: a Flux base takes {' or '.join(FLUX_NETWORKS)} (its transformer has no "
                         f"convolutions for {config.network}); got {config.network!r}")
    if config.min_snr_gamma:
        raise ValueError("min_snr_gamma: Min-SNR weights DDPM timesteps (sd, sdxl); Flux trains by flow matching")


def family_of(pipe) -> str:
    """"flux", "sdxl" or "sd", from the pipeline's components."""
    if getattr(pipe, "transformer", None) is not None:
        return "flux"
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def denoiser_name(pipe) -> str:
    return "transformer" if family_of(pipe) == "flux" else "unet"


def denoiser(pipe) -> torch.nn.Module:
    """The network the LoRA adapts: the U-Net (SD, SDXL) or Flux's transformer."""
    return getattr(pipe, denoiser_name(pipe))


def adapted_text_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The text encoders a text-encoder LoRA adapts: SD's one, SDXL's two CLIPs (diffusers' SDXL example, kohya's
    sdxl script), and Flux's CLIP only, as diffusers' Flux example (T5 stays frozen: it is most of the model)."""
    encoders = text_encoders(pipe)
    return {"text_encoder": encoders["text_encoder"]} if family_of(pipe) == "flux" else encoders


def text_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by component name: ``text_encoder`` (SD) and ``text_encoder_2`` (SDXL's second
    CLIP, Flux's T5)."""
    names = ("text_encoder", "text_encoder_2")
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def _lora_config(config: LoraTrainConfig, targets: Sequence[str]):
    from peft import LoraConfig

    # "gaussian" initialises A ~ N(0, 1/r) and B = 0, as diffusers' example does
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                      target_modules=list(targets))


def trainable(pipe, config: LoraTrainConfig) -> dict[str, dict[str, torch.nn.Parameter]]:
    parts = {denoiser_name(pipe): denoiser(pipe), **(adapted_text_encoders(pipe) if config.text_encoder_lora else {})}
    return {name: {k: p for k, p in module.named_parameters() if p.requires_grad} for name, module in parts.items()}


# --- data: cached posteriors and captions ------------------------------------------------------------------


@dataclass
class _Cache:
    mean: torch.Tensor  # (N, C, h, w) VAE posterior means, already times scaling_factor
    std: torch.Tensor  # (N, C, h, w)
    captions: tuple[str, ...]
    embeddings: Optional[torch.Tensor] = None  # (N, L, D) when the text encoder is frozen
    pooled: Optional[torch.Tensor] = None  # (N, P) SDXL's pooled text embeddings, when frozen
    weights: Optional[torch.Tensor] = None  # (N, 1, h, w) loss weights of the latent pixels (masked loss)
    time_ids: Optional[torch.Tensor] = None  # (1, 6) SDXL's micro-conditioning: original size, crop, target size
    text_ids: Optional[torch.Tensor] = None  # (L, 3) Flux's text token positions


@torch.no_grad()
def _cache_data(pipe, config: LoraTrainConfig, resolution: int, device: str, folder: Optional[str] = None) -> _Cache:
    """The posteriors, captions (and embeddings) of ``folder`` (default: the data); the data's loss weights when
    the run has masks (the prior's images are the base model's own, and keep the plain loss)."""
    from difflab.data.captioned_folder import load_captioned_folder, load_masks
    from difflab.data.foreground import foreground_mask
    from difflab.train.masked_loss import latent_weight

    data = load_captioned_folder(folder or config.data, resolution, config.trigger, config.caption_template)
    cache = _Cache(*encode_posteriors(pipe.vae, data.pixels, device, chunk=16), data.captions)
    if family_of(pipe) == "flux":  # the token positions always; the embeddings once when the encoders are frozen
        embeddings, pooled, cache.text_ids = pipe.encode_prompt(list(data.captions), prompt_2=None, device=device)
        if not config.text_encoder_lora:
            cache.embeddings, cache.pooled = embeddings, pooled
    elif not config.text_encoder_lora:  # a frozen text encoder gives the same embedding every step
        cache.embeddings, cache.pooled = _conditioning(pipe, list(data.captions))
    if family_of(pipe) == "sdxl":  # the whole image, uncropped, at the training size
        cache.time_ids = pipe._get_add_time_ids(
            (resolution, resolution), (0, 0), (resolution, resolution), dtype=torch.float32,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim).to(device)
    if folder is None and config.masks is not None:
        masks = foreground_mask(data.pixels) if config.masks == "auto" else load_masks(data.paths, config.masks,
                                                                                         resolution)
        cache.weights = latent_weight(masks, cache.mean.shape[-2:], config.foreground_weight).to(device)
    return cache


def _conditioning(pipe, captions: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(embeddings (B, L, D), SDXL's or Flux's pooled embeddings (B, P) or None) as the pipeline's own
    encode_prompt makes them for sampling, so the LoRA learns on the conditioning it will see."""
    family = family_of(pipe)
    if family == "sd":
        return _encode(pipe, captions), None
    if family == "flux":  # T5 sequence and CLIP pooled; the text ids depend on the length only (cached)
        embeddings, pooled, _ = pipe.encode_prompt(captions, prompt_2=None, device=denoiser(pipe).device)
        return embeddings, pooled
    embeddings, _, pooled, _ = pipe.encode_prompt(captions, device=pipe.unet.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    return embeddings, pooled


def _encode(pipe, captions: list[str]) -> torch.Tensor:
    """(B, L, D) embeddings exactly as StableDiffusionPipeline.encode_prompt makes them (no clip skip)."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]


# --- training ------------------------------------------------------------------------------------------------


def train_lora(config: LoraTrainConfig, out: str | Path, *, resume: bool = False,
               device: Optional[str] = None) -> Iterator[LoraEvent]:
    """Train a LoRA on ``config.data``, yielding an event per step; writes the layout in the module docstring.

    Under ``accelerate launch``/``torchrun`` with several processes, each trains on its rows of every batch
    (train/distributed.py) on the launcher's device; only the main process writes files and yields events."""
    from diffusers import DDPMScheduler

    from difflab.engine.device import choose_placement

    out = Path(out)
    parallel = data_parallel(config.batch_size, config.mixed_precision)
    device = parallel.device or device or choose_placement().device
    check_out(config, out, resume, "LoRA")
    pipe, model = load_base(config, device)
    if family_of(pipe) == "flux":  # a transformer has no native size: the registry's for the family
        from diffusers import FlowMatchEulerDiscreteScheduler

        resolution = config.resolution or model.width
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # its training sigmas
    else:
        resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the base's training noise schedule
    cache = _cache_data(pipe, config, resolution, device)
    prior = _cache_data(pipe, config, resolution, device, config.reg_data) if config.reg_data else None

    # 1. AdamW over the LoRA weights only; the text encoder's may get its own rate
    params = trainable(pipe, config)
    text_scale = (config.text_encoder_learning_rate or config.learning_rate) / config.learning_rate
    name = denoiser_name(pipe)
    groups = [{"params": list(params[name].values()), "lr_scale": 1.0}]
    groups += [{"params": list(named.values()), "lr_scale": text_scale} for part, named in params.items()
               if part != name]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    run = Run()
    if resume and (out / STATE_NAME).is_file():
        load_state(out, _state_tensors(params), optimizer, run)
    all_params = [p for group in groups for p in group["params"]]
    parallel.broadcast_parameters(all_params)
    autocast, scaler = _precision(config, device)
    _train_mode(pipe, config)
    started = time.perf_counter() - run.seconds

    while run.step < config.steps:
        # 2. This step's images, posterior samples, timesteps and noise, all from this step's generator
        generator = step_generator(config.seed, run.step)
        torch.manual_seed(config.seed * 1_000_003 + run.step)  # anything drawing from the global stream
        with autocast:
            loss = _denoising_loss(pipe, scheduler, cache, config, generator, device, parallel)
            if prior is not None:  # drawn after the data's batch, so runs without reg_data keep their draws
                loss = loss + config.prior_loss_weight * _denoising_loss(pipe, scheduler, prior, config, generator,
                                                                         device, parallel)
        learning_rate = set_learning_rate(optimizer, run.step, config)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        parallel.average_gradients(all_params)  # the whole batch's gradient on every process (several only)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(all_params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        # 4. Bookkeeping, checkpoints (state + LoRA files) and validation images: the main process's
        run.step += 1
        run.seconds = time.perf_counter() - started
        run.rows.append((run.step, parallel.mean(loss).item()))  # the whole batch's loss
        if not parallel.is_main:
            continue
        last = run.step == config.steps
        written = validation = None
        if run.step % config.checkpoint_every == 0 or last:
            save_state(out, _state_tensors(params), optimizer, run)
            save_lora(pipe, config, out, model, run, num_images=len(cache.captions), processes=parallel.world_size)
            written = out
        if (config.validate_every and run.step % config.validate_every == 0) or (last and config.validate_every):
            validation = write_validation(pipe, config, out, run.step, cache.captions)
            _train_mode(pipe, config)
        yield LoraEvent(run.step, config.steps, run.rows[-1][1], learning_rate, run.seconds, written, validation)
    parallel.finish()


def _train_mode(pipe, config: LoraTrainConfig) -> None:
    denoiser(pipe).train()
    if config.text_encoder_lora:
        for encoder in adapted_text_encoders(pipe).values():
            encoder.train()


def _denoising_loss(pipe, scheduler, cache: _Cache, config: LoraTrainConfig, generator: torch.Generator,
                    device: str, parallel: DataParallel = SINGLE) -> torch.Tensor:
    """The base model's loss on a batch of ``cache`` (images, posterior samples, timesteps, noise drawn from
    ``generator``), through the LoRA-adapted networks; masked and Min-SNR weighted as ``config`` says.

    Data-parallel: every draw is of the whole batch, this process keeps ``parallel.rows`` of it, and its loss is
    scaled so that the processes' mean is the whole batch's loss."""
    batch_size = config.batch_size
    rows = parallel.rows(batch_size)
    whole = torch.randint(0, len(cache.captions), (batch_size,), generator=generator)
    latent_noise = torch.randn(cache.mean[whole].shape, generator=generator)[rows]
    index = whole[rows]
    z_0 = cache.mean[index] + cache.std[index] * latent_noise.to(device)  # (b, C, h, w), b = this process's rows
    weight = None if cache.weights is None else cache.weights[index]
    weight_total = None  # the masked loss's normaliser: the whole batch's, shared out between the processes
    if weight is not None and parallel.world_size > 1:
        weight_total = cache.weights[whole].sum() / parallel.world_size
    if cache.embeddings is not None:
        text, pooled = cache.embeddings[index], None if cache.pooled is None else cache.pooled[index]
    else:  # the text-encoder LoRA trains: encode this batch through it (Flux: T5 frozen, as diffusers' example)
        text, pooled = _conditioning(pipe, [cache.captions[i] for i in index.tolist()])  # (B, L, D), (B, P)
    if cache.text_ids is not None:  # Flux: flow matching on the transformer
        from difflab.train.flow_matching import flow_matching_step

        prediction, target = flow_matching_step(pipe, scheduler, z_0, text, pooled, cache.text_ids, generator,
                                                batch_size=batch_size, rows=rows)
        return weighted_mse(prediction.float(), target.float(), weight, weight_total=weight_total)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)[rows]
    eps = torch.randn((batch_size, *z_0.shape[1:]), generator=generator)[rows].to(device)
    t = t.to(device)
    z_t = scheduler.add_noise(z_0, eps, t)
    target = eps if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z_0, eps, t)
    extra = {}
    if cache.time_ids is not None:  # SDXL: pooled text and the size/crop numbers join the time embedding
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": cache.time_ids.repeat(len(index), 1)}
    prediction = pipe.unet(z_t, t, encoder_hidden_states=text, **extra).sample  # (b, C, h, w)
    per_sample = min_snr_weight(scheduler, t, config.min_snr_gamma) if config.min_snr_gamma else None
    return weighted_mse(prediction.float(), target.float(), weight, per_sample, weight_total=weight_total)


def _precision(config: LoraTrainConfig, device: str):
    """(autocast context, grad scaler): fp32 on CPU; fp16/bf16 autocast on GPU, fp16 with loss scaling."""
    import contextlib

    if config.mixed_precision == "no":
        return contextlib.nullcontext(), torch.amp.GradScaler(device="cpu", enabled=False)
    if device == "cpu" and config.mixed_precision == "fp16":
        raise ValueError("mixed_precision: fp16 needs a GPU; use bf16 or no on CPU")
    dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
    device_type = device.split(":")[0]
    scaler = torch.amp.GradScaler(device=device_type, enabled=config.mixed_precision == "fp16")
    return torch.autocast(device_type=device_type, dtype=dtype), scaler


def _state_tensors(params: dict[str, dict[str, torch.nn.Parameter]]) -> dict[str, torch.nn.Parameter]:
    """The LoRA weights under their training-state keys, ``lora.{unet|text_encoder}.{name}``."""
    return {f"lora.{part}.{name}": p for part, named in params.items() for name, p in named.items()}


# --- the results: diffusers and kohya files, the record, validation images ------------------------------------


def peft_state_dicts(pipe, config: LoraTrainConfig) -> dict[str, dict[str, torch.Tensor]]:
    """peft-format LoRA weights per component (``...to_q.lora_A.weight``), as get_peft_model_state_dict gives."""
    from peft.utils import get_peft_model_state_dict

    dicts = {denoiser_name(pipe): get_peft_model_state_dict(denoiser(pipe))}
    if config.text_encoder_lora:
        dicts.update({name: get_peft_model_state_dict(encoder)
                      for name, encoder in adapted_text_encoders(pipe).items()})
    return {part: {k: v.detach().float().cpu().contiguous() for k, v in sd.items()} for part, sd in dicts.items()}


def save_lora(pipe, config: LoraTrainConfig, out: Path, model=None, run: Optional[Run] = None,
              num_images: int = 0, processes: int = 1) -> Path:
    """Write the diffusers file, the kohya export and the JSON record; each file replaced atomically."""
    from diffusers.utils import convert_state_dict_to_diffusers

    dicts = peft_state_dicts(pipe, config)
    out.mkdir(parents=True, exist_ok=True)
    # 1. diffusers format, exactly as the diffusers example saves it, plus the LoraConfig as metadata so that
    #    alpha != rank survives the trip (without it diffusers assumes alpha = rank)
    name = denoiser_name(pipe)
    metadata = {f"{name}_lora_adapter_metadata": _adapter_metadata(denoiser(pipe))}
    # The SD example's conversion renames attention layers only (to_q.lora_A -> to_q.lora.down); in a file that
    # mixes both spellings load_lora_weights reads the peft ones and drops the rest, so wider networks keep
    # peft's names throughout, which load_lora_weights reads as they are. The Flux example saves peft's names.
    keep = config.network != "attention" or name == "transformer"
    layers = {f"{name}_lora_layers": dicts[name] if keep else convert_state_dict_to_diffusers(dicts[name])}
    encoders = {part: state for part, state in dicts.items() if part != name}
    for part, state in encoders.items():  # text_encoder, and SDXL's text_encoder_2
        layers[f"{part}_lora_layers"] = convert_state_dict_to_diffusers(state)
        metadata[f"{part}_lora_adapter_metadata"] = _adapter_metadata(getattr(pipe, part))
    with tempfile.TemporaryDirectory(dir=out, prefix=".lora-") as temporary:
        # the pipeline class's own writer (StableDiffusionPipeline's, StableDiffusionXLPipeline's, FluxPipeline's)
        type(pipe).save_lora_weights(temporary, **layers, **metadata, safe_serialization=True)
        os.replace(Path(temporary) / DIFFUSERS_NAME, out / DIFFUSERS_NAME)
    # 2. kohya format: U-Net layer names for SD and SDXL; BFL's fused layers for Flux (train/kohya_flux.py)
    record = training_record(config, model, run, num_images, processes)
    kohya_path = out / "kohya" / f"{out.resolve().name}.safetensors"
    if name == "unet":
        tensors = to_kohya(dicts["unet"], encoders, config.lora_alpha)
    else:
        from difflab.train.kohya_flux import flux_to_kohya

        tensors = flux_to_kohya(dicts["transformer"], pipe.transformer, config.lora_alpha, encoders.get("text_encoder"))
    atomic_save_safetensors(tensors, kohya_path, metadata=kohya_metadata(config, record, kohya_path.stem))
    record["files"] = {"diffusers": DIFFUSERS_NAME, "kohya": str(kohya_path.relative_to(out))}
    # 3. the record
    atomic_write_bytes(out / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
    return out / DIFFUSERS_NAME


def _adapter_metadata(module) -> dict[str, Any]:
    config = module.peft_config["default"].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def to_kohya(unet: dict[str, torch.Tensor], text_encoders: Optional[dict[str, dict[str, torch.Tensor]]],
             alpha: float, numbered: Optional[bool] = None) -> dict[str, torch.Tensor]:
    """peft LoRA weights -> kohya-ss keys, as A1111/ComfyUI read SD1.x and SDXL LoRAs:

    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` (B -> lora_up),
    text encoder ``...layers.0.self_attn.q_proj`` -> ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``
    (SDXL's two: ``lora_te1_...`` and ``lora_te2_...``), and one ``.alpha`` scalar per layer. ``text_encoders``
    maps component names (``text_encoder``, ``text_encoder_2``) to their weights; ``numbered`` forces the
    numbered prefixes (sd-scripts' Flux calls its CLIP ``lora_te1_``), None numbers them where there are two.
    diffusers' convert_state_dict_to_kohya writes alpha = rank whatever the real alpha was; kohya's scale is alpha / rank, so
    the true alpha is written here.
    """
    tensors: dict[str, torch.Tensor] = {}
    parts = [("lora_unet_", "", unet)]
    text_encoders = {name: state for name, state in (text_encoders or {}).items() if state}
    numbered = "text_encoder_2" in text_encoders if numbered is None else numbered
    for name, state in text_encoders.items():
        prefix = ("lora_te2_" if name == "text_encoder_2" else "lora_te1_") if numbered else "lora_te_"
        parts.append((prefix, "text_model.", state))
    for prefix, root, state in parts:
        for key, value in state.items():
            for peft_name, kohya_name in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
                if key.endswith(peft_name):
                    module = key[: -len(peft_name)]
                    module = root + module.removeprefix(root)  # transformers 5 dropped CLIPTextModel.text_model
                    name = prefix + module.replace(".", "_")
                    tensors[f"{name}.{kohya_name}.weight"] = value.contiguous()
                    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
                    break
            else:
                raise ValueError(f"unexpected LoRA weight {key!r} (DoRA and LoRA biases have no kohya export)")
    return tensors


# kohya's name of a schedule where it differs (transformers' cosine_with_min_lr at min_lr_rate 0.1 is cosine_floor)
KOHYA_LR_SCHEDULERS = {"cosine_floor": "cosine_with_min_lr"}
# kohya's ss_base_model_version per family (sd-scripts' and Forge's spellings)
BASE_MODEL_VERSIONS = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}


def kohya_metadata(config: LoraTrainConfig, record: dict[str, Any], output_name: str) -> dict[str, str]:
    """kohya-ss/sd-scripts' ``ss_*`` training metadata, which A1111's and ComfyUI's LoRA browsers display."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{config.lora_alpha:g}",
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(record["base"].get("family"), "sd_v1"),
        "ss_sd_model_name": record["base"]["name"],
        "ss_new_sd_model_hash": record["base"].get("hash") or "",
        "ss_output_name": output_name,
        "ss_num_train_images": str(record.get("num_images", 0)),
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(record.get("steps_done", 0)),
        "ss_learning_rate": f"{config.learning_rate:g}",
        "ss_unet_lr": f"{config.learning_rate:g}",
        "ss_text_encoder_lr": f"{(config.text_encoder_learning_rate or config.learning_rate):g}"
        if config.text_encoder_lora else "0",
        "ss_network_train_unet_only": str(not config.text_encoder_lora),
        "ss_lr_scheduler": KOHYA_LR_SCHEDULERS.get(config.lr_scheduler, config.lr_scheduler),
        "ss_lr_warmup_steps": str(config.warmup_steps),
        "ss_batch_size_per_device": str(config.batch_size // record.get("processes", 1)),
        "ss_total_batch_size": str(config.batch_size),
        "ss_resolution": f"({record['resolution']}, {record['resolution']})",
        "ss_seed": str(config.seed),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_v2": "False",
        "ss_training_comment": f"difflab train lora; trigger word: {config.trigger}",
        "ss_tag_frequency": json.dumps({"data": {config.trigger: record.get("num_images", 0)}}),
    }


def training_record(config: LoraTrainConfig, model=None, run: Optional[Run] = None, num_images: int = 0,
                    processes: int = 1) -> dict:
    import diffusers
    import peft

    from difflab import __version__
    from difflab.engine.outputs import model_hash

    resolution = config.resolution
    base: dict[str, Any] = {"name": config.base}
    if model is not None:
        base.update(path=str(model.path), family=model.family, hash=model_hash(model.path))
        resolution = resolution or model.width
    return {
        "kind": "lora",
        "config": config.to_dict(),
        "base": base,
        "trigger": config.trigger,
        "resolution": resolution,
        "num_images": num_images,
        "processes": processes,  # data-parallel processes of the last stretch (the global batch is batch_size)
        "steps_done": run.step if run else 0,
        "seconds": round(run.seconds, 2) if run else 0.0,
        "final_loss": run.rows[-1][1] if run and run.rows else None,
        "versions": {"difflab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    }


def validation_prompts(config: LoraTrainConfig, captions: Sequence[str]) -> list[str]:
    return list(config.validation_prompts) or list(dict.fromkeys(captions))[:4]


@torch.no_grad()
def write_validation(pipe, config: LoraTrainConfig, out: Path, step: int, captions: Sequence[str]) -> Path:
    """One image per validation prompt (seed = config.seed + i), with the LoRA live, as one row."""
    from diffusers import DPMSolverMultistepScheduler

    from difflab.viz.grid import make_grid, png_bytes

    prompts = validation_prompts(config, captions)
    for part in (denoiser(pipe), *text_encoders(pipe).values()):
        part.eval()
    training_scheduler = pipe.scheduler
    if family_of(pipe) != "flux":  # Flux samples with its own flow-matching Euler scheduler
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(training_scheduler.config)
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=config.validation_steps, guidance_scale=config.validation_guidance,
                  generator=generators).images
    pipe.scheduler = training_scheduler
    path = out / "validation" / f"step-{step:06d}.png"
    atomic_write_bytes(path, png_bytes(make_grid(images, columns=len(images), scale=2)))
    return path
