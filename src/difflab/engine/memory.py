"""Memory knobs for big models on small GPUs, applied in one place, and the one retry after a CUDA OOM.

The knobs are diffusers' own switches, cheapest first (the order of the OOM ladder):

- ``attention_slicing``: attention computed a few heads at a time; lower peak memory, a little slower.
- ``vae_slicing``: the VAE decodes a batch one image at a time.
- ``vae_tiling``: the VAE decodes (and encodes) overlapping tiles, for images larger than it was trained on;
  the blended seams change pixels slightly.
- ``model_cpu_offload``: whole models (text encoders, U-Net/transformer, VAE) live in CPU memory and move to the
  GPU only while they run; cheap in time, large saving.
- ``sequential_cpu_offload``: every layer is moved to the GPU only for its own forward pass; the smallest
  footprint and by far the slowest.

A cached pipeline keeps whatever knobs the previous request used, so :func:`set_knobs` turns on the requested ones
*and off* the others: a request's memory settings never leak into the next one. Offload only makes sense with
an accelerator: asked for on the CPU it is an error naming the field (the weights already are in CPU memory).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional, TypeVar

import torch

MEMORY_KNOBS = ("attention_slicing", "vae_slicing", "vae_tiling", "model_cpu_offload", "sequential_cpu_offload")
OFFLOAD_KNOBS = ("model_cpu_offload", "sequential_cpu_offload")
_STATE = "_difflab_memory_knobs"  # the knobs a pipeline object currently has on, as a tuple

T = TypeVar("T")


def parse_knobs(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Knob names from repeated options and/or comma lists (``--memory vae_tiling,attention_slicing``), in the
    ladder's order, without duplicates; '-' and '_' are interchangeable. ValueError naming ``memory`` otherwise."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    names = {part.strip().lower().replace("-", "_") for value in values for part in str(value).split(",")}
    names.discard("")
    unknown = sorted(names - set(MEMORY_KNOBS))
    if unknown:
        raise ValueError(f"memory: unknown knob {', '.join(map(repr, unknown))}; choose from {', '.join(MEMORY_KNOBS)}")
    if set(OFFLOAD_KNOBS) <= names:
        raise ValueError("memory: choose one of model_cpu_offload and sequential_cpu_offload, not both")
    return tuple(knob for knob in MEMORY_KNOBS if knob in names)


def check_knobs_fit_device(knobs: Iterable[str], device: str) -> None:
    offload = [knob for knob in knobs if knob in OFFLOAD_KNOBS]
    if offload and device == "cpu":
        raise ValueError(f"memory: {offload[0]} moves weights between CPU and GPU memory; it needs a GPU "
                         "(this run is on the CPU, where the weights already are in CPU memory)")


def current_knobs(pipeline: Any) -> tuple[str, ...]:
    return getattr(pipeline, _STATE, ())


def set_knobs(pipeline: Any, knobs: Iterable[str], device: str) -> tuple[str, ...]:
    """Make exactly ``knobs`` active on ``pipeline`` (placed on ``device``); returns them in ladder order."""
    wanted = parse_knobs(list(knobs))
    check_knobs_fit_device(wanted, device)
    have = current_knobs(pipeline)
    if wanted == have:
        return wanted
    if "attention_slicing" in wanted:
        pipeline.enable_attention_slicing()
    elif "attention_slicing" in have:
        pipeline.disable_attention_slicing()
    vae = getattr(pipeline, "vae", None)
    if vae is not None:  # the AutoencoderKL switches (the pipeline-level enable_vae_* are deprecated)
        vae.enable_slicing() if "vae_slicing" in wanted else vae.disable_slicing()
        vae.enable_tiling() if "vae_tiling" in wanted else vae.disable_tiling()
    offload = next((knob for knob in wanted if knob in OFFLOAD_KNOBS), None)
    had_offload = next((knob for knob in have if knob in OFFLOAD_KNOBS), None)
    if offload != had_offload:
        if had_offload is not None:
            pipeline.remove_all_hooks()
            pipeline.to(device)
        if offload == "model_cpu_offload":
            pipeline.enable_model_cpu_offload(device=device)
        elif offload == "sequential_cpu_offload":
            pipeline.enable_sequential_cpu_offload(device=device)
    setattr(pipeline, _STATE, wanted)
    return wanted


def next_knob(knobs: Iterable[str], device: str) -> Optional[str]:
    """The first ladder knob not yet on (offload only on an accelerator, and only one kind of offload)."""
    knobs = set(knobs)
    for knob in MEMORY_KNOBS:
        if knob in knobs:
            continue
        if knob in OFFLOAD_KNOBS and (device == "cpu" or knobs & set(OFFLOAD_KNOBS)):
            continue
        return knob
    return None


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory, and the one retry with the next memory knob did too (or none was left)."""


def call_with_oom_retry(
    draw: Callable[[], T],
    pipeline: Any,
    knobs: Iterable[str],
    device: str,
    *,
    notes: Optional[list[str]] = None,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> T:
    """``draw()`` with ``knobs`` on; on ``torch.cuda.OutOfMemoryError`` free the cache, turn on the next knob of
    the ladder and call ``draw()`` once more (``draw`` must make its own fresh generators, so the retried images
    are the ones the seeds mean). What happened is said through ``say`` and appended to ``notes``."""
    knobs = set_knobs(pipeline, knobs, device)
    try:
        return draw()
    except torch.cuda.OutOfMemoryError as error:
        first_error = error
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    knob = next_knob(knobs, device)
    if knob is None:
        raise OutOfMemory(f"out of GPU memory with every memory knob on ({', '.join(knobs)}); use a smaller size "
                          "or batch (n), or a smaller dtype") from first_error
    message = f"out of GPU memory; retrying once with memory knob {knob} (on now: {', '.join((*knobs, knob))})"
    say(message)
    if notes is not None:
        notes.append(message)
    set_knobs(pipeline, (*knobs, knob), device)
    try:
        return draw()
    except torch.cuda.OutOfMemoryError as error:
        raise OutOfMemory(f"out of GPU memory again after turning on {knob}; try --memory {next_knob((*knobs, knob), device) or 'sequential_cpu_offload'}"
                          ", a smaller size or a smaller batch") from error
