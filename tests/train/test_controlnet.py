"""ControlNet training on the tiny random SD pipeline: a few steps, the files it writes, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the session fixture)


def _config(base: Path, steps: int, **overrides):
    from difflab.train.controlnet_config import ControlNetTrainConfig

    fields = dict(base=str(base), num_images=8, steps=steps, batch_size=2, warmup_steps=1, checkpoint_every=2,
                  validation_images=2, validation_steps=2, seed=5)
    return ControlNetTrainConfig(**{**fields, **overrides})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((folder / "controlnet").glob("*.safetensors")))


def test_train_writes_a_loadable_controlnet_and_resumes_exactly(tiny_sd_folder, tmp_path):  # noqa: F811
    from diffusers import ControlNetModel

    from difflab.train.controlnet import train_controlnet

    straight = list(train_controlnet(_config(tiny_sd_folder, 4), tmp_path / "straight", device="cpu"))
    assert [event.step for event in straight] == [1, 2, 3, 4]
    assert straight[-1].validation is not None and 0 <= straight[-1].edge_f1 <= 1
    # the same run, stopped after 2 steps and resumed: the same weights, bit for bit
    list(train_controlnet(_config(tiny_sd_folder, 2), tmp_path / "resumed", device="cpu"))
    resumed = list(train_controlnet(_config(tiny_sd_folder, 4), tmp_path / "resumed", resume=True, device="cpu"))
    assert [event.step for event in resumed] == [3, 4]
    assert [event.loss for event in resumed] == [event.loss for event in straight[2:]]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # training moved the zero convolutions away from zero: step 0 is the base model, step 4 is not
    assert any(a[key].abs().sum() > 0 for key in a if key.startswith("controlnet_down_blocks"))

    folder = tmp_path / "straight"
    controlnet = ControlNetModel.from_pretrained(folder / "controlnet", use_safetensors=True)
    assert controlnet.config.conditioning_embedding_out_channels == [16, 32, 96]  # 4x: 64 px maps on 16x16 latents
    record = json.loads((folder / "training.json").read_text())
    assert record["steps_done"] == 4 and record["kind"] == "controlnet" and record["validation_edge_f1"] is not None
    assert (folder / "loss.csv").read_text().count("\n") == 5 and (folder / "loss.png").is_file()
    assert (folder / "validation" / "step-000004.png").is_file()


def test_refuses_to_overwrite_or_resume_with_other_data(tiny_sd_folder, tmp_path):  # noqa: F811
    from difflab.train.controlnet import train_controlnet

    list(train_controlnet(_config(tiny_sd_folder, 1), tmp_path, device="cpu"))
    with pytest.raises(ValueError, match="already holds a ControlNet training run"):
        next(train_controlnet(_config(tiny_sd_folder, 2), tmp_path, device="cpu"))
    with pytest.raises(ValueError, match="num_images differs"):
        next(train_controlnet(_config(tiny_sd_folder, 2, num_images=9), tmp_path, resume=True, device="cpu"))


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be >= 1"),
    ("low", 300, "low must be between 0 and high"),
    ("empty_prompt_probability", 1.5, "empty_prompt_probability must be in"),
    ("learning_rate", float("nan"), "learning_rate must be in"),
])
def test_bad_config_names_the_field(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, 1, **{field: value})


def test_new_controlnet_matches_the_vae_factor():
    from diffusers import UNet2DConditionModel

    from difflab.train.controlnet import new_controlnet

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    for factor, side in ((4, 32), (8, 64)):
        controlnet = new_controlnet(unet, factor)
        hint = controlnet.controlnet_cond_embedding(torch.zeros(1, 3, side, side))
        assert hint.shape[-1] == 8  # lands on the 8x8 latent grid
    with pytest.raises(ValueError, match="VAE factor of 3"):
        new_controlnet(unet, 3)
