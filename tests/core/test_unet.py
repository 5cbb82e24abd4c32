"""The U-Net's contract: shapes, conditioning, the null class, config validation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from difflab.core import unet as unet_module
from difflab.core.unet import SelfAttention, UNet, UNetConfig, timestep_embedding


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


def explicit_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention block written out by hand, independent of its forward: x + out(softmax(Q K^T / sqrt(d)) V).

    Channel layout of the qkv convolution, as the shipped checkpoints were trained with it: q, k, v in thirds,
    each split into ``heads`` consecutive groups of head_dim channels.
    """
    batch, channels, height, width = x.shape
    heads, head_dim = block.heads, channels // block.heads
    qkv = block.qkv(block.norm(x)).flatten(2)  # (B, 3C, HW)
    q, k, v = (part.reshape(batch, heads, head_dim, height * width).transpose(-1, -2) for part in qkv.chunk(3, dim=1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)  # (B, heads, HW, HW)
    attended = (weights @ v).transpose(-1, -2).reshape(batch, channels, height, width)
    return x + block.out(attended)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_computes_softmax_qk_v(heads: int) -> None:
    torch.manual_seed(0)
    block = SelfAttention(32, heads, 8).eval()
    with torch.no_grad():
        block.out.weight.normal_(0, 0.2)  # zero-initialised: randomise, or the check would compare x with x
        block.out.bias.normal_(0, 0.2)
    x = torch.randn(3, 32, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), explicit_attention(block, x), rtol=1e-5, atol=1e-5)


def test_attention_hands_contiguous_qkv_to_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the CPU scaled_dot_product_attention takes its fused kernel only for contiguous q, k, v; transposed
    # views send it down the math path, which made training ~2x slower than diffusers' UNet2DModel (issue 25).
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.is_contiguous(), k.is_contiguous(), v.is_contiguous()))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(unet_module.F, "scaled_dot_product_attention", spy)
    block = SelfAttention(32, 4, 8)
    block(torch.randn(2, 32, 4, 4))
    assert seen == [(True, True, True)]


def test_bundled_digits_checkpoint_loads_and_computes_what_it_did() -> None:
    """The shipped weights still fit (same state-dict keys) and give the outputs recorded before issue 25's change
    of the attention's tensor layout (recorded with the transposed-view code; equal within float rounding)."""
    from difflab.cli import bundled_digits_checkpoint
    from difflab.core.checkpoint import load_model

    model = load_model(bundled_digits_checkpoint()).model  # raises when keys are missing or unexpected
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 250.0, 600.0, 999.0]), torch.tensor([0, 3, 7, 10]))
    recorded = torch.tensor([
        -0.30859101, -1.20650446, 0.96399480, 0.55501026, 0.11838190, 0.69122344, 2.86370087, 0.48750883,
        -0.73534167, -0.09435423, 1.13594270, 0.09124383, -0.53257048, 1.18017173, -0.33465120, -1.47993135,
    ])
    torch.testing.assert_close(out.flatten()[::16], recorded, rtol=1e-5, atol=1e-5)
    assert out.abs().sum().item() == pytest.approx(226.25839233, rel=1e-5)
