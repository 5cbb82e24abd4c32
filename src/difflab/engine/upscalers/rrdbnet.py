"""ESRGAN's RRDBNet (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks"), in the
layout Real-ESRGAN (BasicSR) names its weights, which ``loader.py`` maps every ESRGAN key layout onto.

    x -> [pixel-unshuffle for x2 / x1 models] -> conv_first -> body (RRDB x num_block) -> conv_body (+ skip)
      -> (nearest 2x -> conv_up_k -> lrelu) per factor 2 -> conv_hr -> lrelu -> conv_last

An RRDB is three residual dense blocks (five 3x3 convolutions, each seeing every earlier output) in a residual of
its own; both residuals are scaled by 0.2, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling: keeps the deep, un-normalised network stable
LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class RRDBConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64  # num_feat
    blocks: int = 23  # num_block (RRDBs)
    growth: int = 32  # num_grow_ch: channels each dense convolution adds
    upsamplings: int = 2  # nearest 2x + conv stages: the network's own factor is 2 ** upsamplings
    unshuffle: int = 1  # Real-ESRGAN x2 / x1 models pixel-unshuffle the input by 2 / 4 first

    @property
    def scale(self) -> int:
        return 2 ** self.upsamplings // self.unshuffle


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(features + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(features + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(features + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen.append(F.leaky_relu(conv(torch.cat(seen, 1)), LEAKY_SLOPE))
        return self.conv5(torch.cat(seen, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv_first = nn.Conv2d(c.in_channels * c.unshuffle ** 2, c.features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(c.features, c.growth) for _ in range(c.blocks)))
        self.conv_body = nn.Conv2d(c.features, c.features, 3, padding=1)
        for k in range(1, c.upsamplings + 1):
            self.add_module(f"conv_up{k}", nn.Conv2d(c.features, c.features, 3, padding=1))
        self.conv_hr = nn.Conv2d(c.features, c.features, 3, padding=1)
        self.conv_last = nn.Conv2d(c.features, c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> (B, C, sH, sW)
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feature = self.conv_first(x)
        feature = feature + self.conv_body(self.body(feature))
        for k in range(1, self.config.upsamplings + 1):
            upsampled = F.interpolate(feature, scale_factor=2, mode="nearest")
            feature = F.leaky_relu(getattr(self, f"conv_up{k}")(upsampled), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feature), LEAKY_SLOPE))
