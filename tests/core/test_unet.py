"""The U-Net's contract: shapes, conditioning, the null class, config validation."""

from __future__ import annotations

import pytest
import torch

from difflab.core.unet import UNet, UNetConfig, timestep_embedding


def small(**overrides) -> UNet:
    torch.manual_seed(0)
    config = dict(image_size=8, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_res_blocks=1,
                  dropout=0.0, norm_groups=8)
    return UNet(UNetConfig(**{**config, **overrides})).eval()


def randomise_output(net: UNet) -> UNet:
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.ndim > 1 and parameter.abs().sum() == 0:
                parameter.normal_(0, 0.1)
    return net


def test_output_shape_and_zero_init() -> None:
    net = small(in_channels=3, out_channels=3, channel_mults=(1, 2, 2), image_size=16, attention_levels=(1, 2))
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([0.0, 999.0]))
    assert out.shape == x.shape
    assert out.abs().max() == 0, "the output layer starts at zero, so an untrained net predicts no noise"


def test_time_and_class_change_the_output() -> None:
    net = randomise_output(small(num_classes=10))
    x = torch.randn(1, 1, 8, 8)
    base = net(x, torch.tensor([100.0]), torch.tensor([3]))
    assert not torch.allclose(base, net(x, torch.tensor([101.0]), torch.tensor([3])))
    assert not torch.allclose(base, net(x, torch.tensor([100.0]), torch.tensor([4])))
    # labels=None means the null class (index num_classes), the unconditional model
    torch.testing.assert_close(net(x, torch.tensor([5.0])), net(x, torch.tensor([5.0]), torch.tensor([10])))


def test_batch_rows_are_independent() -> None:
    net = randomise_output(small(num_classes=3))
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 50.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 3])
    together = net(x, t, labels)
    alone = torch.cat([net(x[i : i + 1], t[i : i + 1], labels[i : i + 1]) for i in range(4)])
    # equal up to float rounding: CPU conv kernels pick different blockings for different batch sizes
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_timestep_embedding_is_sinusoidal() -> None:
    embedding = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert embedding.shape == (2, 8)
    torch.testing.assert_close(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert embedding[1, 0].item() == pytest.approx(torch.cos(torch.tensor(10.0)).item())


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=6, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="attention_levels must be in 0..1"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(2,))
    config = UNetConfig(num_classes=10)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown U-Net config fields"):
        UNetConfig.from_dict({**config.to_dict(), "depth": 3})
