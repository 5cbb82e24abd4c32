"""A denoising loss that counts the subject's latent pixels more than the background.

A small shape covers ~2% of a 64x64 picture, so in the plain mean squared error its outline is a rounding error
next to the flat background, which any model predicts early. Weighting the latent pixels under the subject
1 + ``foreground_weight`` times puts the gradient where the shape is drawn. kohya's sd-scripts call the same idea
``--masked_loss`` (loss x mask, masks from an alpha channel or a conditioning folder); with a weight instead of a
hard mask the background still counts, so the model does not forget how to draw it.

Used by the bundled model's U-Net phase (masks from the border colour, the shapes world has flat backgrounds) and
by LoRA training (``--masks DIR`` or ``auto``).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def latent_weight(mask: torch.Tensor, latent_size: tuple[int, int], foreground_weight: float) -> torch.Tensor:
    """(B, 1, h, w) loss weights 1 + weight x mask, the (B, 1, H, W) pixel mask in [0, 1] max-pooled to the latent
    grid: a latent pixel the subject's outline touches counts as foreground."""
    pooled = torch.nn.functional.adaptive_max_pool2d(mask, latent_size)
    return 1 + foreground_weight * pooled


def weighted_mean(error: torch.Tensor, weight: torch.Tensor | None,
                  sample_weight: torch.Tensor | None = None, weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a (B, C, h, w) per-element error, pixel (b, :, i, j) counting ``weight[b, 0, i, j]`` times
    (normalised by the total weight, so a weight of ones is the plain mean); None is the plain mean.
    ``sample_weight`` (B,) scales sample b's share without changing the normaliser, as diffusers' examples apply
    Min-SNR (loss per sample x weight, then the mean). ``weight_total`` replaces ``weight.sum()`` as the
    normaliser: a data-parallel process weighs its rows against the whole batch's weight (train/distributed.py),
    so that the processes' mean is the whole batch's weighted mean."""
    if sample_weight is not None:
        error = error * sample_weight.to(error.dtype).view(-1, 1, 1, 1)
    if weight is None:
        return error.mean()
    total = weight.sum() if weight_total is None else weight_total
    return (error * weight).sum() / (total * error.shape[1])


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                 sample_weight: torch.Tensor | None = None, weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over (B, C, h, w) latents, weighted per latent pixel as in ``weighted_mean``."""
    return weighted_mean((prediction - target).pow(2), weight, sample_weight, weight_total)


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights (Hang et al. 2023) of a diffusers noise scheduler's timesteps, the formula of
    core.process.min_snr_weight: min(SNR(t), gamma) / SNR(t) for epsilon prediction, / (SNR(t) + 1) for v, as
    diffusers' examples (``--snr_gamma``) and kohya (``--min_snr_gamma``) weight them. Steps with little noise,
    where the loss is about texture the model already draws, stop dominating the gradient."""
    from difflab.core.process import min_snr_weight as weight_of_snr

    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()].double()
    return weight_of_snr(alpha_bar / (1 - alpha_bar), scheduler.config.prediction_type, gamma).float()
