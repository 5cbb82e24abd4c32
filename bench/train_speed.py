"""Training speed: difflab's from-scratch U-Net against diffusers' UNet2DModel, same architecture, same size.

    .venv/bin/python bench/train_speed.py [--quick] [--steps 10] [--warmup 3] [--threads 2]
                                          [--compile none|small|all] [--head-dim N] [--out bench/results/train-speed.md]

Both networks are built in DDPM's CIFAR-10 layout (Ho et al. 2020, appendix B): channel multipliers 1,2,2,2, two
residual blocks per level, self-attention at 16x16 and in the middle, one head, dropout 0.1, the time embedding as
a per-channel scale and shift; 32x32x3 images, batch 64, float32, AdamW, on the CPU. Two sizes: base channels
32 and 64 (about 2.41M and 9.59M parameters; the two libraries' counts agree within 0.01%, checked and printed).

One training step is: noise a fixed batch at random timesteps, predict the noise, MSE, backward, AdamW step. The
rows are interleaved: every round runs one step of every configuration in turn, so a machine that gets busier
or quieter part-way (this one is shared) slows every row alike and the ratios stay fair. Each row's figure is
the median over ``--steps`` rounds after ``--warmup`` rounds (the first of which compiles, for compiled rows).

Rows: eager and channels_last for both libraries at both sizes; torch.compile of both at the sizes ``--compile``
names (the first call, which compiles, is reported apart: torch caches compiled kernels on disk, so a second
process compiles faster); and difflab's attention as it was before issue 25 (transposed, non-contiguous q/k/v,
which sends scaled_dot_product_attention down its math path on the CPU), eager, as a baseline for the change.

Target (checked at the end): difflab's U-Net at least as fast per step as UNet2DModel at both sizes, eager.
``--quick`` is a smoke test (1 warm-up, 2 measured rounds, no compile): its numbers are not the benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from difflab.core import unet as unet_module
from difflab.core.schedules import NoiseSchedule
from difflab.core.unet import UNet, UNetConfig

DEFAULT_OUT = Path(__file__).parent / "results" / "train-speed.md"
SIZES = {"small": 32, "large": 64}  # base channels -> ~2.41M and ~9.59M parameters
BATCH, IMAGE_SIZE, CHANNELS = 64, 32, 3
PARAMETER_TOLERANCE = 1e-4  # the two libraries' parameter counts must agree within 0.01%


def difflab_unet(base: int, head_dim: int | None) -> torch.nn.Module:
    heads = 1 if head_dim is None else 2 * base // head_dim  # attention runs on 2 * base channels
    return UNet(UNetConfig(
        image_size=IMAGE_SIZE, in_channels=CHANNELS, out_channels=CHANNELS, base_channels=base,
        channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), attention_heads=heads, dropout=0.1,
    ))


def diffusers_unet(base: int, head_dim: int | None) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SIZE, in_channels=CHANNELS, out_channels=CHANNELS, layers_per_block=2,
        block_out_channels=(base, 2 * base, 2 * base, 2 * base),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=head_dim,  # None: one head of all the channels, as in DDPM
        resnet_time_scale_shift="scale_shift",  # difflab's ResBlock: norm(h) * (1 + scale) + shift
        norm_num_groups=32, dropout=0.1,
    )


def transposed_attention_forward(self: unet_module.SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """difflab's attention before issue 25, verbatim: transposed views of q, k, v (the CPU's math path)."""
    batch, channels, height, width = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width).unbind(1)
    attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
    return x + self.out(attended)


def with_transposed_attention(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, unet_module.SelfAttention):
            module.forward = transposed_attention_forward.__get__(module)
    return model


@dataclass
class Config:
    """One row: a network, how it runs, and its measured step times."""

    library: str  # "difflab" or "diffusers"
    size: str  # key of SIZES
    mode: str  # "eager", "channels_last", "compiled", "before issue 25"
    model: torch.nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    memory_format: torch.memory_format = torch.contiguous_format
    first_step: float = 0.0  # seconds of the first call (for compiled rows: compiling)
    times: list[float] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build(library: str, size: str, mode: str, head_dim: int | None = None) -> Config:
    torch.manual_seed(0)
    base = SIZES[size]
    model = (difflab_unet if library == "difflab" else diffusers_unet)(base, head_dim).train()
    if mode == "before issue 25":
        with_transposed_attention(model)
    memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    runner = torch.compile(model) if mode == "compiled" else model
    if library == "difflab":
        def forward(x_t, t):
            return runner(x_t, t.float())
    else:
        def forward(x_t, t):
            return runner(x_t, t).sample
    return Config(library, size, mode, model, forward, optimizer, memory_format)


def train_step(config: Config, schedule: NoiseSchedule, x_0: torch.Tensor, round_index: int) -> float:
    """One DDPM training step (Ho et al. 2020, alg. 1) on the fixed batch; the noise and timesteps depend only
    on the round, so every row does the same arithmetic. Returns the wall seconds of the step."""
    generator = torch.Generator().manual_seed(round_index)
    t = torch.randint(0, schedule.num_timesteps, (BATCH,), generator=generator)
    noise = torch.randn(x_0.shape, generator=generator)
    alpha_bar = schedule.alphas_cumprod.float()[t][:, None, None, None]
    x_t = (alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * noise).contiguous(memory_format=config.memory_format)
    started = time.perf_counter()
    config.optimizer.zero_grad(set_to_none=True)
    loss = F.mse_loss(config.forward(x_t, t), noise)
    loss.backward()
    config.optimizer.step()
    return time.perf_counter() - started


def median(config: Config) -> float:
    return statistics.median(config.times)


def format_table(configs: list[Config]) -> str:
    by_key = {(c.library, c.size, c.mode): c for c in configs}
    lines = [
        "| parameters (difflab / diffusers) | mode | difflab s/step | diffusers s/step | difflab time / diffusers time |",
        "|---|---|---:|---:|---:|",
    ]
    for size in SIZES:
        for mode in ("eager", "channels_last", "compiled"):
            ours, theirs = by_key.get(("difflab", size, mode)), by_key.get(("diffusers", size, mode))
            if ours is None or theirs is None:
                continue
            lines.append(
                f"| {ours.parameters / 1e6:.3f}M / {theirs.parameters / 1e6:.3f}M | {mode} | {median(ours):.3f} "
                f"| {median(theirs):.3f} | {median(ours) / median(theirs):.2f}x |"
            )
        before, theirs = by_key.get(("difflab", size, "before issue 25")), by_key.get(("diffusers", size, "eager"))
        if before is not None and theirs is not None:
            lines.append(
                f"| {before.parameters / 1e6:.3f}M / {theirs.parameters / 1e6:.3f}M | eager, difflab's attention "
                f"before issue 25 | {median(before):.3f} | {median(theirs):.3f} "
                f"| {median(before) / median(theirs):.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 warm-up, 2 rounds, no compile")
    parser.add_argument("--steps", type=int, help="measured rounds (default 10; 2 with --quick)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds before measuring (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--compile", choices=("none", "small", "all"),
                        help="sizes with torch.compile rows (default small; none with --quick)")
    parser.add_argument("--sizes", default="small,large", help="comma-separated: small (~2.41M), large (~9.59M)")
    parser.add_argument("--head-dim", type=int,
                        help="attention head size (default: one head, as DDPM; 8 is UNet2DModel's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    compile_sizes = args.compile or ("none" if args.quick else "small")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if steps < 1 or warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1; got {steps} and {warmup}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(f"--sizes must name some of {', '.join(SIZES)}; got {args.sizes!r}")
    if args.head_dim is not None and (args.head_dim < 1 or any(2 * SIZES[s] % args.head_dim for s in sizes)):
        parser.error(f"--head-dim must divide the attention's channels ({', '.join(str(2 * SIZES[s]) for s in sizes)});"
                     f" got {args.head_dim}")
    torch.set_num_threads(args.threads)

    # 1. Build every row; parameter counts must match between the libraries
    configs = []
    for size in sizes:
        modes = ["eager", "channels_last"]
        if compile_sizes == "all" or compile_sizes == size:
            modes.append("compiled")
        for mode in modes:
            configs += [build("difflab", size, mode, args.head_dim), build("diffusers", size, mode, args.head_dim)]
        configs.append(build("difflab", size, "before issue 25", args.head_dim))
        counts = {c.library: c.parameters for c in configs if c.size == size and c.mode == "eager"}
        ours, theirs = counts["difflab"], counts["diffusers"]
        print(f"{size}: difflab {ours:,} parameters, diffusers {theirs:,} ({(ours - theirs) / theirs:+.4%})",
              file=sys.stderr)
        if abs(ours - theirs) / theirs > PARAMETER_TOLERANCE:
            print(f"error: parameter counts differ by more than {PARAMETER_TOLERANCE:.2%}", file=sys.stderr)
            return 1

    # 2. Interleaved rounds: one step of every row per round
    schedule = NoiseSchedule.create("linear", 1000)
    x_0 = torch.rand((BATCH, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    started = time.perf_counter()
    for round_index in range(warmup + steps):
        for config in configs:
            seconds = train_step(config, schedule, x_0, round_index)
            if round_index == 0:
                config.first_step = seconds
                if config.mode == "compiled":
                    print(f"compiled {config.library} {config.size}: first step (compiling) {seconds:.1f} s",
                          file=sys.stderr)
            if round_index >= warmup:
                config.times.append(seconds)
        print(f"round {round_index + 1}/{warmup + steps} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    # 3. Report
    compiled = [c for c in configs if c.mode == "compiled"]
    eager = {(c.library, c.size): median(c) for c in configs if c.mode == "eager"}
    target_lines = []
    for size in sizes:
        ratio = eager[("difflab", size)] / eager[("diffusers", size)]
        target_lines.append(f"- {'PASS' if ratio <= 1.0 else 'FAIL'}: difflab eager at most diffusers' step time "
                            f"at {size} size: {ratio:.2f}x")
    if args.quick:
        target_lines.append("- (quick run: too few steps; these verdicts mean nothing)")
    report = "\n".join([
        "# Training speed: difflab core U-Net vs diffusers UNet2DModel" + (" (--quick smoke test)" if args.quick else ""),
        "",
        f"DDPM CIFAR-10 layout, {IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, batch {BATCH}, float32, AdamW; median of "
        f"{steps} interleaved rounds after {warmup} warm-up rounds; attention "
        f"{'one head' if args.head_dim is None else f'heads of {args.head_dim} channels'}; torch {torch.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs seen), "
        f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        format_table(configs),
        "",
        *(f"- torch.compile, {c.library} {c.size}: first step (compiling, on-disk cache as found) {c.first_step:.1f} s"
          for c in compiled),
        "",
        "Targets:",
        *target_lines,
        "",
    ])
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from difflab.io.atomic import atomic_write_bytes

    atomic_write_bytes(args.out, report.encode())  # a killed run never leaves half a results file
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
