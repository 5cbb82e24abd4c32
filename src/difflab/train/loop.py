"""What the fine-tuning runs (LoRA, ControlNet) share: the resumable training state on disk, the loss log, the
out-folder checks, the cached VAE posteriors, and swapping a diffusers folder in whole.

The training state is one safetensors file: the trained tensors under the caller's keys, AdamW's moments as
``optimizer.{index}.{name}`` (core.checkpoint.optimizer_tensors) and ``step``/``seconds`` in the metadata, so a
resumed run continues exactly as the uninterrupted one would have. ``loss.csv`` (step,loss) and ``loss.png``
sit beside it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difflab.core.checkpoint import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_bytes,
    optimizer_tensors,
    read_safetensors_with_metadata,
    restore_optimizer,
)

STATE_NAME = "training_state.safetensors"
RECORD_NAME = "training.json"


@dataclass
class Run:
    """Where a run stands: steps done, wall time (resumed parts included) and the loss per step."""

    step: int = 0
    seconds: float = 0.0
    rows: list[tuple[int, float]] = field(default_factory=list)


def check_out(config, out: Path, resume: bool, what: str) -> None:
    """Refuse to overwrite a run without --resume, and to resume one trained with other ``RESUME_FIELDS`` of
    the config (data, shapes) than the one in ``out``'s record; ``what`` names the run in the error."""
    if (out / STATE_NAME).is_file() and not resume:
        raise ValueError(f"{str(out)!r} already holds a {what} training run; pass --resume or use a new -o folder")
    record = out / RECORD_NAME
    if resume and record.is_file():
        saved = json.loads(record.read_text()).get("config", {})
        mine = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
        for name in type(config).RESUME_FIELDS:
            if saved.get(name) != mine.get(name):
                raise ValueError(f"{name} differs from the run in {str(out)!r} ({saved.get(name)!r}); "
                                 "resume with the same settings or use a new -o folder")


def save_state(out: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, run: Run) -> None:
    """The trained ``params`` (under their keys), the optimizer, the step and time; then the loss log."""
    tensors = {key: p.detach().clone().contiguous() for key, p in params.items()}
    optimizer_state, metadata = optimizer_tensors(optimizer)
    tensors.update(optimizer_state)
    metadata.update(step=str(run.step), seconds=repr(run.seconds))
    atomic_save_safetensors(tensors, out / STATE_NAME, metadata=metadata)
    write_losses(out, run.rows)


def load_state(out: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, run: Run) -> None:
    """The inverse of ``save_state``: copies into ``params`` and the optimizer in place, and sets ``run``."""
    path = out / STATE_NAME
    tensors, metadata = read_safetensors_with_metadata(path)
    with torch.no_grad():
        for key, p in params.items():
            if key not in tensors or tensors[key].shape != p.shape:
                raise CheckpointError(f"cannot resume: {str(path)!r} has no matching {key}")
            p.copy_(tensors[key])
    restore_optimizer(optimizer, tensors, metadata)
    run.step, run.seconds = int(metadata["step"]), float(metadata["seconds"])
    run.rows = [row for row in read_losses(out) if row[0] <= run.step]


def write_losses(out: Path, rows: list[tuple[int, float]]) -> None:
    from difflab.viz.curves import plot_loss_curve

    text = "step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in rows)
    atomic_write_bytes(out / "loss.csv", text.encode())
    if rows:
        plot_loss_curve(rows, out / "loss.png")


def read_losses(out: Path) -> list[tuple[int, float]]:
    path = out / "loss.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(handle)]


@torch.no_grad()
def encode_posteriors(vae, pixels: torch.Tensor, device: str, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of q(z | x) for (N, 3, H, W) pixels in [-1, 1] in the denoiser's units, (mean - shift_factor) x
    scaling_factor and std x scaling_factor (Flux's VAE has a shift, SD's none), encoded ``chunk`` images at a
    time: the VAE is frozen, so each step only samples mean + std * noise."""
    means, stds = [], []
    for start in range(0, len(pixels), chunk):
        posterior = vae.encode(pixels[start:start + chunk].to(device)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    return (torch.cat(means) - shift) * scale, torch.cat(stds) * scale  # (N, C, h, w) each


def save_pretrained_atomically(model, folder: Path) -> None:
    """save_pretrained into a temporary folder beside ``folder``, then swap it in: a reader sees the old folder
    or the new one, never half of one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for path in (temporary, old):
        shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(str(temporary), safe_serialization=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(temporary, folder)
    shutil.rmtree(old, ignore_errors=True)
