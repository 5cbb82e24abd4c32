"""Single-file checkpoints: the tiny SD pipeline written in the original (LDM/A1111) layout and loaded back offline
gives the folder's images exactly; the converter is the inverse of diffusers' own LDM -> diffusers converters;
pickles only with --allow-unsafe-pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.registry import ModelNotAvailable, resolve_model
from difflab.engine.request import build_request
from difflab.engine.single_file import (CONFIG_METADATA_KEY, read_header, save_single_file, unet_to_ldm,
                                        vae_to_ldm)

CACHE = PipelineCache()


def request(model: Path, **fields):
    return build_request(**{"prompt": "a red circle on the left, blue background", "model": str(model),
                            "width": 64, "height": 64, "steps": 4, "guidance": 7.5, "n": 2, **fields})


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


@pytest.fixture(scope="module")
def single_file(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_single_file(tiny_sd_folder, tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def test_checkpoint_has_the_original_key_layout(single_file: Path) -> None:
    keys, metadata = read_header(single_file)
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.down.0.block.0.conv1.weight", "first_stage_model.decoder.up.0.block.0.norm1.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert key in keys, key
    assert not any(".resnets." in k or "down_blocks" in k for k in keys)  # no diffusers names left
    assert "unet/config.json" in json.loads(metadata[CONFIG_METADATA_KEY])


def test_round_trip_gives_the_folders_images(tiny_sd_folder: Path, single_file: Path) -> None:
    model = resolve_model(str(single_file))
    assert model.single_file and model.family == "sd"
    from_folder = pixels(run(request(tiny_sd_folder), CACHE))
    from_file = pixels(run(request(single_file), CACHE))
    assert all(np.array_equal(a, b) for a, b in zip(from_folder, from_file))  # same weights, same kernels: exact
    euler_a = (pixels(run(request(model_, scheduler="Euler a"), CACHE)) for model_ in (tiny_sd_folder, single_file))
    assert all(np.array_equal(a, b) for a, b in zip(*euler_a))


def test_converter_inverts_diffusers_ldm_converters() -> None:
    """Shapes the tiny fixture lacks: VAE mid-block attention (1x1 conv <-> linear), two resnets per U-Net level,
    cross-attention at every level; diffusers' LDM -> diffusers converters must give back every tensor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4, latent_channels=4)
    unet = UNet2DConditionModel(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)
    for model, to_ldm, back, prefix in ((vae, vae_to_ldm, convert_ldm_vae_checkpoint, "first_stage_model."),
                                        (unet, unet_to_ldm, convert_ldm_unet_checkpoint, "model.diffusion_model.")):
        state = model.state_dict()
        ldm = {prefix + k: v for k, v in to_ldm(state, dict(model.config)).items()}
        returned = back(ldm, dict(model.config))
        assert set(returned) == set(state)
        assert all(torch.equal(returned[k].reshape(state[k].shape), state[k]) for k in state)


def test_missing_configs_name_the_fix(tiny_sd_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    bare = save_single_file(tiny_sd_folder, tmp_path / "bare.safetensors", embed_configs=False)
    with pytest.raises(ModelNotAvailable, match=r"needs the configs of 'sd15'.*difflab pull sd15"):
        run(request(bare), PipelineCache())


def _fake_sd15_cache(tiny_sd_folder: Path, cache: Path) -> None:
    """A Hugging Face cache holding sd15's configs (here: the tiny model's), as `difflab pull` leaves one."""
    repo = cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for path in tiny_sd_folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt"):
            (snapshot / path.relative_to(tiny_sd_folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, snapshot / path.relative_to(tiny_sd_folder))


def test_pickle_checkpoints_only_with_the_flag(tiny_sd_folder: Path, single_file: Path, tmp_path: Path,
                                              monkeypatch) -> None:
    import huggingface_hub.constants
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-sd.ckpt"
    torch.save({"state_dict": load_file(str(single_file))}, ckpt)  # the A1111 .ckpt layout
    out = tmp_path / "out"
    arguments = ["generate", "a red circle", "--model", str(ckpt), "--width", "64", "--height", "64", "--steps", "2",
                 "-o", str(out)]
    refused = CliRunner().invoke(app, arguments)
    assert refused.exit_code == 2 and "pickle checkpoint" in refused.output and "--allow-unsafe-pickle" in refused.output
    assert not out.exists()
    with pytest.raises(ValueError, match="allow-unsafe-pickle"):
        run(request(ckpt), PipelineCache())

    # allowed: the pickle has no embedded configs, so they come from sd15 in the (offline) Hugging Face cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_sd15_cache(tiny_sd_folder, tmp_path / "hub")
    allowed = CliRunner().invoke(app, [*arguments, "--allow-unsafe-pickle"])
    assert allowed.exit_code == 0, allowed.output
    assert len(list(out.glob("*.png"))) == 1
    from_pickle = pixels(run(request(ckpt, allow_unsafe_pickle=True), PipelineCache()))
    from_folder = pixels(run(request(tiny_sd_folder), CACHE))
    assert all(np.array_equal(a, b) for a, b in zip(from_folder, from_pickle))
