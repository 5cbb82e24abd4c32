"""Checkpoints of difflab's own diffusion models: a folder of safetensors weights and a JSON config.

    CHECKPOINT/
      config.json                 U-Net config, noise schedule, parameterisation, class names, training record
      model.safetensors           the EMA weights: what sampling uses
      training_state.safetensors  raw weights and AdamW state, for --resume (not shipped with bundled models)

Pickle files (.pt, .ckpt, .pth, .bin) are never loaded: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difflab.core.process import PREDICTIONS, Prediction
from difflab.io.atomic import atomic_write_bytes, temporary_beside  # noqa: F401  (atomic_write_bytes: imported from here across the package)
from difflab.core.schedules import NoiseSchedule
from difflab.core.unet import UNet, UNetConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_STATE_NAME = "training_state.safetensors"
FORMAT = "difflab-pixel-diffusion"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one of difflab's."""


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "linear"
    num_timesteps: int = 1000
    zero_terminal_snr: bool = False

    def build(self) -> NoiseSchedule:
        return NoiseSchedule.create(self.name, self.num_timesteps, zero_terminal_snr=self.zero_terminal_snr)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained model and sample from it."""

    unet: UNetConfig
    schedule: ScheduleSpec = ScheduleSpec()
    prediction: Prediction = "epsilon"
    class_names: tuple[str, ...] = ()
    dataset: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # the recipe and record: steps, seconds, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "unet": self.unet.to_dict(),
            "schedule": self.schedule.__dict__,
            "prediction": self.prediction,
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "training": self.training,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        if data.get("format") != FORMAT:
            raise CheckpointError(f"config.json is not a difflab checkpoint config (format {data.get('format')!r})")
        prediction = data.get("prediction", "epsilon")
        if prediction not in PREDICTIONS:
            raise CheckpointError(f"config.json: prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        return cls(
            unet=UNetConfig.from_dict(data["unet"]),
            schedule=ScheduleSpec(**data.get("schedule", {})),
            prediction=prediction,
            class_names=tuple(data.get("class_names", ())),
            dataset=data.get("dataset", ""),
            training=data.get("training", {}),
        )


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: UNet
    schedule: NoiseSchedule
    path: Path


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    fd, tmp = temporary_beside(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(folder: str | Path, spec: ModelSpec, weights: dict[str, torch.Tensor]) -> Path:
    folder = Path(folder)
    atomic_save_safetensors(weights, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(spec.to_json(), indent=2) + "\n").encode())
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a folder, or a ``config.json`` / ``model.safetensors`` inside one."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a pickle file; difflab loads only safetensors (pickles can run code)"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    folder = path if path.is_dir() else path.parent
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} has no {name}")
    return folder


def read_spec(path: str | Path) -> ModelSpec:
    folder = resolve_checkpoint(path)
    try:
        data = json.loads((folder / CONFIG_NAME).read_text())
        return ModelSpec.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(folder)!r}: config.json is corrupt ({error})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({error})") from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An optimizer's state as flat safetensors tensors ``optimizer.{param index}.{name}`` plus its hyper-parameters
    as JSON metadata: resumable training without pickling the state dict."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": torch.as_tensor(value)
        for index, values in state["state"].items()
        for name, value in values.items()
    }
    return tensors, {"param_groups": json.dumps(state["param_groups"])}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The inverse of ``optimizer_tensors``."""
    state: dict = {"state": {}, "param_groups": json.loads(metadata["param_groups"])}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)


def read_safetensors_with_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    tensors = read_safetensors(path)
    with safe_open(path, "pt") as handle:
        return tensors, handle.metadata() or {}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint's EMA weights into a fresh U-Net in eval mode."""
    folder = resolve_checkpoint(path)
    spec = read_spec(folder)
    model = UNet(spec.unet)
    weights = read_safetensors(folder / WEIGHTS_NAME)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: weights do not match its config "
            f"(missing {len(missing)} tensors, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    return LoadedModel(spec, model.to(device).eval(), spec.schedule.build(), folder)
