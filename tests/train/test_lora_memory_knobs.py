"""The memory knobs of LoRA training on SD, SDXL and Flux bases (tiny random pipelines, CPU): gradient
checkpointing recomputes activations and must not change a single result; bf16 autocast trains within bf16's
precision of the fp32 run and still writes fp32 files that plain diffusers loads. fp16 needs a GPU (refused here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the session fixture)

STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from difflab.data.captioned_folder import write_shape_set

    folder = tmp_path_factory.mktemp("hexagons")
    write_shape_set(folder, "hexagon", n=4, seed=0)
    return folder


@pytest.fixture(scope="module")
def bases(tiny_sd_folder, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    from tests.engine.family_fixtures import save_family_pipeline

    return {"sd": tiny_sd_folder, "sdxl": save_family_pipeline("sdxl", tmp_path_factory.mktemp("sdxl")),
            "flux": save_family_pipeline("flux", tmp_path_factory.mktemp("flux"))}


def _train(base: Path, data: Path, out: Path, **overrides):
    from difflab.train.lora import train_lora
    from difflab.train.lora_config import LoraTrainConfig

    fields = dict(base=str(base), data=str(data), trigger="hexagon", rank=2, alpha=4.0, steps=STEPS, batch_size=2,
                  warmup_steps=1, checkpoint_every=STEPS, learning_rate=5e-2, seed=3, resolution=64,
                  text_encoder_lora=True)
    events = list(train_lora(LoraTrainConfig(**(fields | overrides)), out, device="cpu"))
    return [e.loss for e in events], load_file(str(out / "pytorch_lora_weights.safetensors"))


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_gradient_checkpointing_is_switched_on_and_changes_nothing(family, bases, data, tmp_path):
    from difflab.train.lora import adapted_text_encoders, denoiser, load_base
    from difflab.train.lora_config import LoraTrainConfig

    config = LoraTrainConfig(base=str(bases[family]), data=str(data), trigger="hexagon", text_encoder_lora=True,
                             gradient_checkpointing=True)
    pipe, _ = load_base(config)
    assert denoiser(pipe).is_gradient_checkpointing
    assert all(encoder.is_activation_checkpointing for encoder in adapted_text_encoders(pipe).values())
    plain_losses, plain = _train(bases[family], data, tmp_path / "plain")
    losses, weights = _train(bases[family], data, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert losses == pytest.approx(plain_losses, rel=1e-6, abs=1e-8)
    assert weights.keys() == plain.keys()
    moved = 0
    for key in plain:
        torch.testing.assert_close(weights[key], plain[key], rtol=1e-5, atol=1e-7)
        moved += int(".lora_B." in key or "lora.up" in key) and int(plain[key].abs().max() > 0)
    assert moved > 0, "no LoRA up-weight moved from zero: the comparison could not fail"


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_bf16_autocast_trains_close_to_fp32_and_saves_fp32(family, bases, data, tmp_path):
    fp32_losses, _ = _train(bases[family], data, tmp_path / "fp32")
    losses, weights = _train(bases[family], data, tmp_path / "bf16", mixed_precision="bf16")
    assert np.all(np.isfinite(losses))
    assert losses != fp32_losses, "bf16 autocast changed nothing: it did not run"
    assert losses == pytest.approx(fp32_losses, rel=0.05)  # bf16 keeps ~3 significant digits
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_fp16_on_cpu_is_refused_by_name(bases, data, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        _train(bases["sd"], data, tmp_path / "fp16", mixed_precision="fp16")
