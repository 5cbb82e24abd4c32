"""ESRGAN-family upscalers: files in every key layout load, upscale by their scale, and equal an independent,
functional implementation of the architecture (written here from the papers' definitions, straight on the original
ESRGAN layout's tensors); tiling with enough overlap equals the whole image; the hires fix and `difflab upscale`
use them; pickles are refused unless allowed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.upscalers.loader import load_network
from difflab.engine.upscalers.tiling import tiled

runner = CliRunner()


def random_esrgan(scale: int, features: int = 8, growth: int = 4, blocks: int = 2, seed: int = 0) -> dict:
    """Random weights in the original ESRGAN repository's layout (model.N), small enough for a test."""
    generator = torch.Generator().manual_seed(seed)

    def conv(name: str, cin: int, cout: int) -> dict:
        return {f"{name}.weight": 0.1 * torch.randn(cout, cin, 3, 3, generator=generator),
                f"{name}.bias": 0.01 * torch.randn(cout, generator=generator)}

    state = conv("model.0", 3, features)
    for i in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin, cout = features + (c - 1) * growth, (growth if c < 5 else features)
                state |= conv(f"model.1.sub.{i}.RDB{r}.conv{c}.0", cin, cout)
    state |= conv(f"model.1.sub.{blocks}", features, features)
    # after the trunk: [upsample, conv, lrelu] per factor 2, then HR conv, lrelu, last conv
    index = 2
    for _ in range(int(np.log2(scale))):
        state |= conv(f"model.{index + 1}", features, features)
        index += 3
    state |= conv(f"model.{index}", features, features)
    state |= conv(f"model.{index + 2}", features, 3)
    return state


def reference_esrgan(state: dict, x: torch.Tensor) -> torch.Tensor:
    """ESRGAN (Wang et al. 2018) written directly on the original layout: RRDBs of dense blocks, residuals scaled 0.2,
    nearest 2x + conv per factor, HR conv, last conv; leaky ReLU 0.2."""
    def conv(t, name):
        return F.conv2d(t, state[f"{name}.weight"], state[f"{name}.bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    first = conv(x, "model.0")
    trunk, i = first, 0
    while f"model.1.sub.{i}.RDB1.conv1.0.weight" in state:
        block_input = trunk
        for r in (1, 2, 3):
            dense = [trunk]
            for c in range(1, 5):
                dense.append(lrelu(conv(torch.cat(dense, 1), f"model.1.sub.{i}.RDB{r}.conv{c}.0")))
            trunk = conv(torch.cat(dense, 1), f"model.1.sub.{i}.RDB{r}.conv5.0") * 0.2 + dense[0]
        trunk = trunk * 0.2 + block_input
        i += 1
    feature = first + conv(trunk, f"model.1.sub.{i}")
    after = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.weight$", k)) and int(m.group(1)) > 1})
    for index in after[:-2]:
        feature = lrelu(conv(F.interpolate(feature, scale_factor=2, mode="nearest"), f"model.{index}"))
    return conv(lrelu(conv(feature, f"model.{after[-2]}")), f"model.{after[-1]}")


def modified_layout(state: dict) -> dict:
    """victorca25's names for the same tensors (what A1111's mod2normal reads)."""
    after = sorted({int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.weight$", k) and int(k.split(".")[1]) > 1})
    names = {f"model.{i}": f"upconv{n + 1}" for n, i in enumerate(after[:-2])} | {
        f"model.{after[-2]}": "HRconv", f"model.{after[-1]}": "conv_last", "model.0": "conv_first"}
    blocks = max(int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))) + 1
    out = {}
    for key, value in state.items():
        if ".RDB" in key:
            out[key.replace("model.1.sub.", "RRDB_trunk.").replace(".0.weight", ".weight").replace(".0.bias", ".bias")] = value
        elif key.startswith(f"model.1.sub.{blocks}."):
            out["trunk_conv." + key.rsplit(".", 1)[1]] = value
        else:
            layer, kind = key.rsplit(".", 1)
            out[f"{names[layer]}.{kind}"] = value
    return out


def basicsr_layout(state: dict) -> dict:
    """Real-ESRGAN / BasicSR names for the same tensors."""
    renames = {"conv_first": "conv_first", "trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_last": "conv_last"}
    out = {}
    for key, value in modified_layout(state).items():
        if key.startswith("RRDB_trunk."):
            out[key.replace("RRDB_trunk.", "body.").replace(".RDB", ".rdb")] = value
        else:
            layer, kind = key.rsplit(".", 1)
            out[f"{renames.get(layer) or layer.replace('upconv', 'conv_up')}.{kind}"] = value
    return out


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("layout", ["original", "modified", "basicsr"])
def test_esrgan_files_in_every_layout_equal_the_reference(tmp_path: Path, scale: int, layout: str) -> None:
    state = random_esrgan(scale)
    stored = {"original": state, "modified": modified_layout(state), "basicsr": basicsr_layout(state)}[layout]
    save_file(stored, str(tmp_path / "net.safetensors"))
    network = load_network(tmp_path / "net.safetensors")
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, reference = network(x), reference_esrgan(state, x)
    assert ours.shape == (1, 3, 12 * scale, 10 * scale) and network.config.scale == scale
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_real_esrgan_x2_unshuffles_its_input(tmp_path: Path) -> None:
    """Real-ESRGAN's x2 models: pixel-unshuffle by 2 (conv_first sees 12 channels), then the 4x trunk."""
    state = random_esrgan(4)
    state["model.0.weight"] = 0.1 * torch.randn(8, 12, 3, 3, generator=torch.Generator().manual_seed(2))
    save_file(basicsr_layout(state), str(tmp_path / "x2.safetensors"))
    network = load_network(tmp_path / "x2.safetensors")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(network(x), reference_esrgan(state, F.pixel_unshuffle(x, 2)), atol=1e-5, rtol=1e-5)
    assert network.config.scale == 2


def random_srvgg(scale: int = 2, features: int = 8, convolutions: int = 2) -> dict:
    generator = torch.Generator().manual_seed(4)
    state, index = {}, 0
    for cin, cout in [(3, features)] + [(features, features)] * convolutions:
        state[f"body.{index}.weight"] = 0.2 * torch.randn(cout, cin, 3, 3, generator=generator)
        state[f"body.{index}.bias"] = 0.01 * torch.randn(cout, generator=generator)
        state[f"body.{index + 1}.weight"] = 0.25 + 0.05 * torch.randn(cout, generator=generator)  # PReLU slopes
        index += 2
    state[f"body.{index}.weight"] = 0.2 * torch.randn(3 * scale * scale, features, 3, 3, generator=generator)
    state[f"body.{index}.bias"] = 0.01 * torch.randn(3 * scale * scale, generator=generator)
    return state


def reference_srvgg(state: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Real-ESRGAN's compact net: conv + PReLU pairs, a last conv, pixel shuffle, plus the nearest-upscaled input."""
    last = max(int(k.split(".")[1]) for k in state)
    feature = x
    for index in range(0, last, 2):
        feature = F.conv2d(feature, state[f"body.{index}.weight"], state[f"body.{index}.bias"], padding=1)
        feature = F.prelu(feature, state[f"body.{index + 1}.weight"])
    feature = F.conv2d(feature, state[f"body.{last}.weight"], state[f"body.{last}.bias"], padding=1)
    return F.pixel_shuffle(feature, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")


def test_compact_srvgg_equals_the_reference_and_tiles_exactly(tmp_path: Path) -> None:
    state = random_srvgg(scale=2)
    save_file(state, str(tmp_path / "compact.safetensors"))
    network = load_network(tmp_path / "compact.safetensors")
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = network(x)
        torch.testing.assert_close(whole, reference_srvgg(state, x, 2), atol=1e-5, rtol=1e-5)
        tiles = []
        exact = tiled(network, x, 2, tile=16, overlap=4, on_tile=lambda done, total: tiles.append(total))
        seams = tiled(network, x, 2, tile=16, overlap=0)
    assert tiles[-1] == 9  # 3 x 3 tiles
    # three 3x3 convolutions: a receptive-field radius of 3 input pixels, so an overlap of 4 is exact
    torch.testing.assert_close(exact, whole, atol=1e-6, rtol=0)
    assert (seams - whole).abs().max() > 1e-3  # without context the tile borders differ


def test_pickles_refused_unless_allowed_and_bad_files_named(tmp_path: Path) -> None:
    state = random_srvgg()
    torch.save({"params_ema": state}, tmp_path / "net.pth")  # how Real-ESRGAN ships its weights
    with pytest.raises(ValueError, match="pickle"):
        load_network(tmp_path / "net.pth")
    assert load_network(tmp_path / "net.pth", allow_unsafe_pickle=True).config.scale == 2
    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="upscaler 'other.safetensors': not a loadable ESRGAN"):
        load_network(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_network(tmp_path / "broken.safetensors")


def test_upscale_command_writes_new_files_with_a1111_postprocessing(tmp_path: Path, monkeypatch) -> None:
    from difflab.engine.metadata import png_info

    folder = tmp_path / "upscalers"
    folder.mkdir()
    save_file(random_srvgg(scale=2), str(folder / "2x-compact.safetensors"))
    monkeypatch.setenv("DIFFLAB_UPSCALER_DIR", str(folder))
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        source, pnginfo=png_info("a red circle\nSteps: 4, Seed: 1"))
    out = tmp_path / "out"
    for expected in ("in-upscaled.png", "in-upscaled-1.png"):  # the second run never replaces the first file
        result = runner.invoke(app, ["upscale", str(source), "-u", "2x-compact", "--scale", "3", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert (out / expected).is_file()
    with Image.open(out / "in-upscaled.png") as image:
        assert image.size == (72, 60)  # x2 network twice (x4), then Lanczos down to x3
        assert image.text["parameters"].startswith("a red circle")
        assert image.text["postprocessing"] == "Postprocess upscale by: 3, Postprocess upscaler: 2x-compact"
    for arguments, message in ((["-u", "no-such"], "--upscaler must be one of Lanczos, Nearest, None, 2x-compact"),
                               (["-u", "Lanczos", "--scale", "20"], "--scale must be in [1, 8]"),
                               (["-u", "Lanczos", "-o", str(source)], "--out")):
        result = runner.invoke(app, ["upscale", str(source), *arguments])
        assert result.exit_code == 2 and message in result.output, result.output


def test_hires_fix_uses_the_upscaler_and_records_it(tiny_sd_folder: Path, tmp_path: Path, monkeypatch) -> None:
    from difflab.engine.hires import upscale
    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.engine.upscalers.registry import resolve_upscaler

    folder = tmp_path / "upscalers"
    folder.mkdir()
    save_file(random_srvgg(scale=2), str(folder / "2x-compact.safetensors"))
    monkeypatch.setenv("DIFFLAB_UPSCALER_DIR", str(folder))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    network_up = upscale([image], 32, 32, resolve_upscaler("2x-compact"))[0]
    lanczos_up = upscale([image], 32, 32)[0]
    expected = load_network(folder / "2x-compact.safetensors")(
        torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None])
    expected = (expected[0].clamp(0, 1).permute(1, 2, 0).detach().numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(network_up), expected)
    assert not np.array_equal(np.asarray(network_up), np.asarray(lanczos_up))
    request = build_request(prompt="a red circle", model=str(tiny_sd_folder), steps=2, width=32, height=32,
                            hires_scale=2, hires_strength=0.5, hires_steps=2, hires_upscaler="2x-compact")
    path = save_result(run(request, PipelineCache()), tmp_path / "out")[0]
    parameters, record = read_png_metadata(path)
    assert "Hires upscaler: 2x-compact" in parameters and record["mode"]["hires"]["upscaler"] == "2x-compact"
    with Image.open(path) as drawn:
        assert drawn.size == (64, 64)
    with pytest.raises(ValueError, match="hires_upscaler must be one of"):
        build_request(prompt="a red circle", hires_scale=2, hires_upscaler="R-ESRGAN 4x+")
