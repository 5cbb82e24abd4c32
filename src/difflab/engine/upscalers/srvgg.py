"""Real-ESRGAN's compact network, SRVGGNetCompact (Wang et al. 2021, "Real-ESRGAN"; the ``realesr-general-x4v3`` and
``realesr-animevideov3`` files): a plain stack of 3x3 convolutions with PReLU at low resolution, a pixel shuffle to
the output size, and the nearest-upsampled input added back (the network learns the residual).

Weights are named ``body.N``: conv, PReLU, (conv, PReLU) x num_conv, the last conv."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SRVGGConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    convolutions: int = 32  # num_conv: hidden conv + PReLU pairs after the first
    scale: int = 4


class SRVGGNetCompact(nn.Module):
    def __init__(self, config: SRVGGConfig):
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.features, 3, padding=1), nn.PReLU(c.features)]
        for _ in range(c.convolutions):
            layers += [nn.Conv2d(c.features, c.features, 3, padding=1), nn.PReLU(c.features)]
        layers.append(nn.Conv2d(c.features, c.out_channels * c.scale ** 2, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> (B, C, sH, sW)
        out = F.pixel_shuffle(self.body(x), self.config.scale)
        return out + F.interpolate(x, scale_factor=self.config.scale, mode="nearest")
