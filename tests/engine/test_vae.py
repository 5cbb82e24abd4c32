"""VAE swap (A1111's sd_vae): another AutoencoderKL decodes the image; checked against plain diffusers with the VAE
replaced, for a diffusers folder and the same weights as an A1111 single file; refusals name ``vae``; the cached
pipeline gets its own VAE back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request

CACHE = PipelineCache()


@pytest.fixture(scope="module")
def vaes(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Another VAE of the model's shape (its weights moved by noise) as a folder and as one LDM-layout file; and
    two that do not fit (8 latent channels; another scaling factor)."""
    import diffusers
    from safetensors.torch import save_file

    from difflab.engine.single_file import vae_to_ldm

    root = tmp_path_factory.mktemp("vaes")
    vae = diffusers.AutoencoderKL.from_pretrained(str(tiny_sd_folder / "vae"), local_files_only=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    vae.save_pretrained(root / "other", safe_serialization=True)
    file = root / "other-file.vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}, str(file))
    wide = diffusers.AutoencoderKL.from_config({**dict(vae.config), "latent_channels": 8})
    wide.save_pretrained(root / "wide", safe_serialization=True)
    rescaled = diffusers.AutoencoderKL.from_config({**dict(vae.config), "scaling_factor": 0.13025})
    rescaled.save_pretrained(root / "rescaled", safe_serialization=True)
    return {"folder": root / "other", "file": file, "wide": root / "wide", "rescaled": root / "rescaled",
            "root": root}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_swapped_vae_draws_what_diffusers_draws_with_it(tiny_sd_folder: Path, vaes) -> None:
    import diffusers

    fields = dict(prompt="a red circle", model=str(tiny_sd_folder), steps=3, guidance=4.0, seed=3, width=32,
                  height=32)
    own = pixels(run(build_request(**fields), CACHE).images[0])
    swapped = pixels(run(build_request(**fields, vae=str(vaes["folder"])), CACHE).images[0])
    from_file = pixels(run(build_request(**fields, vae=str(vaes["file"])), CACHE).images[0])
    again = pixels(run(build_request(**fields), CACHE).images[0])
    reference = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
    reference.vae = diffusers.AutoencoderKL.from_pretrained(str(vaes["folder"]), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    theirs = pixels(reference("a red circle", num_inference_steps=3, guidance_scale=4.0, width=32, height=32,
                              generator=[torch.Generator("cpu").manual_seed(3)]).images[0])
    assert np.abs(swapped - theirs).max() <= 1
    assert np.abs(from_file - swapped).max() <= 1  # the same weights as an A1111 file
    assert np.abs(swapped - own).max() > 10  # the VAE changed the picture
    assert np.array_equal(again, own)  # and left the cached pipeline as it was


def test_infotext_record_and_names_from_the_vae_folder(tiny_sd_folder: Path, vaes, tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result
    from difflab.engine.replay import plan_replay

    monkeypatch.setenv("DIFFLAB_VAE_DIR", str(vaes["root"]))
    request = build_request(prompt="a red circle", model=str(tiny_sd_folder), steps=2, width=32, height=32,
                            vae="other-file")  # found as other-file.vae.safetensors, A1111's naming
    path = save_result(run(request, CACHE), tmp_path)[0]
    parameters, record = read_png_metadata(path)
    digest = hashlib.sha256(vaes["file"].read_bytes()).hexdigest()
    assert f"VAE hash: {digest[:10]}, VAE: other-file" in parameters
    assert record["mode"]["vae"]["sha256"] == digest and record["request"]["vae"] == "other-file"
    assert plan_replay(path).request.vae == "other-file"


@pytest.mark.parametrize("which,message", [
    ("wide", "its latent channels (8) do not fit the model's VAE (4)"),
    ("rescaled", "its scaling factor (0.13025) do not fit"),
    ("missing", "no such file or folder"),
    ("pickle", "pickles"),
    ("unknown-name", "not found in the VAE folder"),
])
def test_refusals_name_the_vae(tiny_sd_folder: Path, vaes, tmp_path: Path, which: str, message: str) -> None:
    source = {"missing": str(tmp_path / "nothere.safetensors"), "pickle": str(tmp_path / "vae.pt"),
              "unknown-name": "no-such-vae"}.get(which) or str(vaes[which])
    request = build_request(prompt="a red circle", model=str(tiny_sd_folder), steps=2, width=32, height=32, vae=source)
    with pytest.raises(ValueError, match=f"vae .*{message}".replace("(", r"\(").replace(")", r"\)")):
        run(request, CACHE)
