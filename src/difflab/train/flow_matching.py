"""Flux's training objective, rectified flow, as diffusers' examples/dreambooth/train_dreambooth_lora_flux.py
trains it (weighting scheme "none"):

    sigma = the scheduler's sigma at a uniformly drawn training timestep,   eps ~ N(0, I)
    z_sigma = (1 - sigma) z_0 + sigma eps                     (a straight line from the data to the noise)
    loss = || (eps - z_0) - transformer(pack(z_sigma), sigma, text) ||^2   (the velocity along that line)

Latents are packed 2x2 into tokens with their (row, column) ids, the transformer's output unpacked back to
(B, C, h, w), so the masked loss weights the same latent pixels as on the U-Net families. A guidance-distilled base
(FLUX.1-dev: ``guidance_embeds``) gets the guidance value as an input, 3.5 as the example uses.
"""

from __future__ import annotations

import torch

DISTILLED_GUIDANCE = 3.5  # diffusers' Flux LoRA example's default --guidance_scale for training


def flow_matching_step(pipe, scheduler, z_0: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor,
                       text_ids: torch.Tensor, generator: torch.Generator, *, batch_size: int | None = None,
                       rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target), both (B, C, h, w), for latents ``z_0`` under ``text`` (B, L, D), ``pooled`` (B, P)
    and ``text_ids`` (L, 3); sigma and noise drawn from ``generator``. A data-parallel process passes the whole
    batch's ``batch_size`` and its ``rows`` of it: the draws are the whole batch's, ``z_0`` is its rows only."""
    from diffusers import FluxPipeline

    batch, channels, height, width = z_0.shape
    device = z_0.device
    drawn = batch if batch_size is None else batch_size
    noise = torch.randn((drawn, channels, height, width), generator=generator)[rows].to(device)
    index = (torch.rand(drawn, generator=generator) * scheduler.config.num_train_timesteps).long()[rows]
    timesteps = scheduler.timesteps[index].to(device)
    sigma = scheduler.sigmas[index].to(device=device, dtype=z_0.dtype).view(-1, 1, 1, 1)
    z_sigma = (1 - sigma) * z_0 + sigma * noise
    packed = FluxPipeline._pack_latents(z_sigma, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, z_0.dtype)
    transformer = pipe.transformer
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((batch,), DISTILLED_GUIDANCE, device=device, dtype=z_0.dtype)
    output = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=pooled,
                         encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    scale = pipe.vae_scale_factor
    prediction = FluxPipeline._unpack_latents(output, height * scale, width * scale, scale)
    return prediction, noise - z_0
