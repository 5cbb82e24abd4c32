"""Latent space as a picture: images, the VAE latents that diffusion actually runs on, and the decoded images.

Stable Diffusion-style models diffuse in the latent space of an autoencoder (Rombach et al. 2022): SD's VAE turns
512x512x3 pixels into 64x64x4 latents, the bundled tiny-shapes model 64x64x3 into 16x16x4. Showing each latent
channel as a grey image next to the picture and its reconstruction makes the compression visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from difflab.viz.grid import make_grid, to_pil


@dataclass(frozen=True)
class RoundTrip:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # (B, C, h, w), the posterior mean times the VAE's scaling factor (what the U-Net sees)
    reconstructions: torch.Tensor  # (B, 3, H, W) in [-1, 1]

    @property
    def pixel_values(self) -> int:
        return int(self.images[0].numel())

    @property
    def latent_values(self) -> int:
        return int(self.latents[0].numel())

    @property
    def rms_error(self) -> float:
        """Root-mean-square reconstruction error on the [0, 1] pixel scale."""
        return float(((self.reconstructions.clamp(-1, 1) - self.images) / 2).pow(2).mean().sqrt())


@torch.no_grad()
def vae_round_trip(vae, images: Sequence[Image.Image]) -> RoundTrip:
    """Encode PIL images with a diffusers ``AutoencoderKL`` (its posterior mean, no sampling) and decode them back."""
    import numpy as np

    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for im in images])  # (B, 3, H, W)
    parameter = next(vae.parameters())
    pixels_in = pixels.to(parameter.device, parameter.dtype)
    latents = vae.encode(pixels_in).latent_dist.mean * vae.config.scaling_factor
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    return RoundTrip(pixels, latents.float().cpu(), decoded.float().cpu())


def latent_grid(trip: RoundTrip, *, scale: int = 2, row_labels: Sequence[str] | None = None) -> Image.Image:
    """One row per image (named by ``row_labels`` in the left margin): the picture, each latent channel (grey,
    stretched to its own range, upscaled to the picture's size), and the reconstruction; columns labelled."""
    height, width = trip.images.shape[-2:]
    tiles: list[Image.Image] = []
    for image, latent, reconstruction in zip(trip.images, trip.latents, trip.reconstructions):
        tiles += to_pil(image[None])
        for channel in latent:  # (h, w)
            low, high = float(channel.min()), float(channel.max())
            grey = (channel - low) / max(high - low, 1e-6) * 2 - 1
            tiles.append(to_pil(grey[None, None])[0].resize((width, height), Image.NEAREST).convert("RGB"))
        tiles += to_pil(reconstruction[None].clamp(-1, 1))
    channels = trip.latents.shape[1]
    labels = ["image"] + [f"latent {c}" for c in range(channels)] + ["decoded"]
    return make_grid(tiles, columns=channels + 2, scale=scale, labels=labels, row_labels=row_labels)
