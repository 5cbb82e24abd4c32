"""Training: the loss falls, checkpoints round-trip, resume is exact, bad checkpoints are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difflab.core import checkpoint as ckpt
from difflab.core.train import TrainConfig, learning_rate_at, train
from difflab.core.unet import UNetConfig
from difflab.data.digits import LabelledImages, load_digits

TINY = UNetConfig(image_size=8, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_res_blocks=1,
                  norm_groups=8, num_classes=10)


def digits_subset(n: int = 256) -> LabelledImages:
    data = load_digits()
    return LabelledImages(data.images[:n], data.labels[:n], data.class_names)


def run(out: Path, steps: int, resume: bool = False, **overrides) -> list:
    config = TrainConfig(steps=steps, batch_size=32, checkpoint_every=3, warmup_steps=2, **overrides)
    return list(train(digits_subset(), TINY, config, out, dataset_name="digits", resume=resume))


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = run(tmp_path / "straight", steps=6)
    run(tmp_path / "resumed", steps=3)
    resumed = run(tmp_path / "resumed", steps=6, resume=True)
    assert [e.step for e in resumed] == [4, 5, 6]
    assert [e.loss for e in resumed] == [e.loss for e in straight[3:]]
    a = ckpt.read_safetensors(tmp_path / "straight" / ckpt.WEIGHTS_NAME)
    b = ckpt.read_safetensors(tmp_path / "resumed" / ckpt.WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "resumed" / "loss.csv").read_text().splitlines()) == 7  # header + 6 steps


def test_loss_falls_and_checkpoint_loads(tmp_path: Path) -> None:
    events = run(tmp_path, steps=60, learning_rate=2e-3)
    first, last = sum(e.loss for e in events[:10]) / 10, sum(e.loss for e in events[-10:]) / 10
    assert last < 0.6 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    loaded = ckpt.load_model(tmp_path)
    assert loaded.spec.unet == TINY and loaded.spec.class_names == tuple("0123456789")
    assert loaded.spec.training["steps_done"] == 60
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_learning_rate_warms_up_then_decays() -> None:
    config = TrainConfig(steps=1000, warmup_steps=100, learning_rate=1e-3)
    assert learning_rate_at(0, config) == pytest.approx(1e-5)
    assert learning_rate_at(99, config) == pytest.approx(1e-3)
    assert learning_rate_at(999, config) == pytest.approx(1e-4, rel=1e-3)


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "nothing")
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load_model(tmp_path / "model.ckpt")
    run(tmp_path / "good", steps=3)
    (tmp_path / "good" / ckpt.WEIGHTS_NAME).write_bytes(b"\x00" * 100)
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors"):
        ckpt.load_model(tmp_path / "good")
    (tmp_path / "good" / ckpt.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="config.json is corrupt"):
        ckpt.load_model(tmp_path / "good")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="label_dropout must be in"):
        TrainConfig(label_dropout=1.5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        TrainConfig(prediction="score")  # type: ignore[arg-type]
