"""Device and dtype, chosen in one place: cuda > mps > cpu; half precision on GPUs, float32 on the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')})"


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """``auto`` picks the fastest present device; on it bf16 where the GPU supports it (no fp16 overflow in
    SDXL's VAE), fp16 on other GPUs, and fp32 on the CPU, where half precision is slower and less accurate."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA GPU")
    chosen: Optional[torch.dtype] = DTYPES[dtype]
    if chosen is None:
        if device == "cuda":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device == "mps":
            chosen = torch.float16
        else:
            chosen = torch.float32
    return Placement(device, chosen)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
