"""A small U-Net for pixel-space diffusion (Ho et al. 2020, appendix B; Nichol & Dhariwal 2021).

Encoder of residual blocks that halve the resolution level by level, a bottleneck, and a decoder that doubles
it back, concatenating the encoder's feature maps at the same resolution (skip connections). The timestep enters
every residual block through a sinusoidal embedding and an MLP; an optional class label adds a learned embedding
to it, with one extra "null" class (index ``num_classes``) that training swaps in at random so the same network
also learns the unconditional model classifier-free guidance needs. Self-attention runs at the low resolutions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 8  # height = width of the images it denoises
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32  # channels at full resolution; level i has base_channels * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one per resolution level; each level after the first halves H, W
    num_res_blocks: int = 2  # residual blocks per level in the encoder (the decoder has one more, as in DDPM)
    attention_levels: tuple[int, ...] = (1, 2)  # levels (indices into channel_mults) with self-attention
    attention_heads: int = 4
    dropout: float = 0.1  # DDPM used 0.1 on CIFAR-10; helps small datasets like digits not overfit
    num_classes: int | None = None  # None: unconditional; else labels 0..num_classes-1, and num_classes = null
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if not self.channel_mults:
            raise ValueError("channel_mults must name at least one level")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channel_mults) - 1} "
                f"for {len(self.channel_mults)} levels"
            )
        bad = [level for level in self.attention_levels if not 0 <= level < len(self.channel_mults)]
        if bad:
            raise ValueError(f"attention_levels must be in 0..{len(self.channel_mults) - 1}; got {bad}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown U-Net config fields: {sorted(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, as in DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added in between (as a per-channel scale and shift)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.embed(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        # (B, 3, heads, head_dim, HW) -> (3, B, heads, HW, head_dim) in one copy, so q, k, v come out contiguous:
        # on the CPU scaled_dot_product_attention takes its fused (flash) kernel only for contiguous inputs and
        # falls back to the math path (explicit bmm + softmax, ~2x slower training, issue 25) for transposed views.
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)  # each (B, heads, HW, head_dim)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, head_dim)
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.out(attended)


class Level(nn.Module):
    """The blocks of one resolution level: residual blocks, each followed by attention where configured."""

    def __init__(self, channels_in: list[int], channels: int, embed_dim: int, attention: bool, config: UNetConfig):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(c_in, channels, embed_dim, config.dropout, config.norm_groups) for c_in in channels_in
        )
        self.attention = nn.ModuleList(
            SelfAttention(channels, config.attention_heads, config.norm_groups) if attention else nn.Identity()
            for _ in channels_in
        )


class UNet(nn.Module):
    """Predicts the noise (or x_0, or v) in x_t at timestep t, optionally for class ``labels``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        embed_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        # one extra row for the null class used by classifier-free guidance
        self.class_embedding = nn.Embedding(config.num_classes + 1, embed_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)

        channels = [base * mult for mult in config.channel_mults]
        skip_channels = [base]  # channels of every feature map the encoder hands to the decoder
        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        current = base
        for level, width in enumerate(channels):
            inputs = [current] + [width] * (config.num_res_blocks - 1)
            self.down_levels.append(Level(inputs, width, embed_dim, level in config.attention_levels, config))
            skip_channels += [width] * config.num_res_blocks
            current = width
            if level < len(channels) - 1:
                self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skip_channels.append(width)

        self.mid_res1 = ResBlock(current, current, embed_dim, config.dropout, config.norm_groups)
        self.mid_attention = SelfAttention(current, config.attention_heads, config.norm_groups)
        self.mid_res2 = ResBlock(current, current, embed_dim, config.dropout, config.norm_groups)

        self.up_levels, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            inputs = []
            for _ in range(config.num_res_blocks + 1):
                inputs.append(current + skip_channels.pop())
                current = width
            self.up_levels.append(Level(inputs, width, embed_dim, level in config.attention_levels, config))
            if level > 0:
                self.upsamples.append(nn.Conv2d(width, width, 3, padding=1))

        self.norm_out = _norm(current, config.norm_groups)
        self.conv_out = nn.Conv2d(current, config.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); t: (B,) timesteps (floats allowed); labels: (B,) ints, ``num_classes`` = null."""
        embedding = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, 4 base)
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            embedding = embedding + self.class_embedding(labels)

        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down_levels):
            for res, attention in zip(blocks.res, blocks.attention):
                h = attention(res(h, embedding))
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.mid_res2(self.mid_attention(self.mid_res1(h, embedding)), embedding)

        for i, blocks in enumerate(self.up_levels):
            for res, attention in zip(blocks.res, blocks.attention):
                h = attention(res(torch.cat([h, skips.pop()], dim=1), embedding))
            if i < len(self.upsamples):
                h = self.upsamples[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))

        return self.conv_out(F.silu(self.norm_out(h)))
