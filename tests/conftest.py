"""Shared fixtures: a tiny trained checkpoint (seconds to make) for the CLI and sampling tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflab.core.train import TrainConfig, train
    from difflab.core.unet import UNetConfig
    from difflab.data.digits import load_digits

    out = tmp_path_factory.mktemp("tiny-checkpoint")
    config = UNetConfig(image_size=8, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
                        num_res_blocks=1, norm_groups=8, num_classes=10)
    for _ in train(load_digits(), config, TrainConfig(steps=4, batch_size=16, checkpoint_every=4), out):
        pass
    return out
