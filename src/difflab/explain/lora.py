"""``difflab explain lora``: why a LoRA is so much smaller than the model it changes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from difflab.explain.common import Context, pipeline, wrap


def run(ctx: Context) -> Iterator[str]:
    from difflab.train.lora_config import UNET_TARGETS

    _, loaded = pipeline(ctx)
    unet = loaded.unet
    total = sum(p.numel() for p in unet.parameters())
    targets = [m for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in UNET_TARGETS)]
    yield "A LoRA freezes each weight W (out x in) and learns a low-rank change B A, with A (r x in), B (out x r):"
    yield "r (in + out) numbers instead of in x out. difflab trains it on the attention projections"
    yield f"({', '.join(UNET_TARGETS)}), like diffusers' example. On {ctx.model}'s U-Net ({len(targets)} such layers):"
    yield f"{'':>12} {'parameters':>12} {'MB (fp32)':>10} {'share':>8}"
    yield f"{'U-Net':>12} {total:>12,} {total * 4 / 2**20:>10.2f} {1:>8.1%}"
    rows = []
    for rank in (4, 8, 16):
        count = sum(rank * (m.in_features + m.out_features) for m in targets)
        rows.append((rank, count))
        yield f"{'LoRA r=' + str(rank):>12} {count:>12,} {count * 4 / 2**20:>10.2f} {count / total:>8.1%}"
    smallest, largest = rows[0], rows[-1]
    yield from wrap(f"Even at r = {largest[0]} the LoRA is {largest[1] / total:.1%} of the U-Net (r = {smallest[0]}: "
                    f"{smallest[1] / total:.1%}): only a few layers change, and each change is a thin product of two "
                    "matrices. On SDXL (2.6B U-Net parameters) the same count gives LoRAs of tens of MB against a "
                    "5 GB model.")
    yield "figure (bars: the U-Net and each rank, MB on a log scale):"
    yield str(bar_chart(total, rows, ctx))


def bar_chart(total: int, rows: list[tuple[int, int]], ctx: Context) -> Path:
    from difflab.viz.curves import _pyplot

    plt = _pyplot()
    names = ["U-Net"] + [f"LoRA r={rank}" for rank, _ in rows]
    sizes = [total * 4 / 2**20] + [count * 4 / 2**20 for _, count in rows]
    figure, axis = plt.subplots(figsize=(6, 3), dpi=100)
    axis.bar(names, sizes, color=["tab:gray"] + ["tab:blue"] * len(rows))
    axis.set_yscale("log")
    axis.set_ylabel("MB (fp32, log scale)")
    axis.set_title(f"{ctx.model}: the U-Net against LoRAs on its attention projections")
    for x, size in enumerate(sizes):
        axis.text(x, size, f"{size:.2f}", ha="center", va="bottom", fontsize=8)
    figure.tight_layout()
    path = ctx.out / "lora.png"
    figure.savefig(path)
    plt.close(figure)
    return path
