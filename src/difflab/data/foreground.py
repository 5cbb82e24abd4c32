"""The foreground of a picture on a flat background: every pixel whose colour differs from the border's."""

from __future__ import annotations

import torch


@torch.no_grad()
def foreground_mask(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, H, W) 1.0 where a pixel's colour differs from its image's median border colour (the background).

    ``x`` is (B, 3, H, W) in [-1, 1]; for pictures on a flat background (the shapes world, product shots)."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (B, 3, 4W)
    background = border.median(dim=-1).values[..., None, None]  # (B, 3, 1, 1)
    return ((x - background).abs().amax(dim=1, keepdim=True) > threshold).to(x.dtype)
