"""Running requests on a real (tiny, random) StableDiffusionPipeline: sizes, seeds, schedulers, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.registry import ModelNotAvailable, resolve_model
from difflab.engine.request import build_request

CACHE = PipelineCache()


def request(folder: Path, **fields):
    return build_request(**{"prompt": "a red circle on the left, blue background", "model": str(folder),
                            "width": 64, "height": 64, "steps": 4, "guidance": 7.5, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_images_have_the_asked_size_and_repeat_exactly(tiny_sd_folder: Path) -> None:
    first = run(request(tiny_sd_folder, n=2, width=48, height=32), CACHE)
    assert [im.size for im in first.images] == [(48, 32), (48, 32)]
    assert first.seeds == [0, 1]
    again = run(request(tiny_sd_folder, n=2, width=48, height=32), CACHE)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first.images, again.images))
    assert not np.array_equal(pixels(first.images[0]), pixels(first.images[1]))  # seed + i differs


@pytest.mark.parametrize("scheduler", [None, "Euler a", "DPM++ 2M Karras"])
def test_image_is_the_same_alone_or_in_a_batch(tiny_sd_folder: Path, scheduler) -> None:
    """Image i of a batch is drawn from seed + i alone. Measured on this CPU: the difference is at most 1/255
    (CPU conv/attention kernels pick different blockings per batch size, so not always bit-identical)."""
    batch = run(request(tiny_sd_folder, n=3, seed=10, scheduler=scheduler), CACHE)
    alone = run(request(tiny_sd_folder, n=1, seed=12, scheduler=scheduler), CACHE)
    difference = np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max()
    assert difference <= 2, f"image differs by {difference}/255 between batch and alone"


def test_scheduler_choice_does_not_leak_into_the_next_request(tiny_sd_folder: Path) -> None:
    default = run(request(tiny_sd_folder), CACHE)
    run(request(tiny_sd_folder, scheduler="Euler a"), CACHE)
    after = run(request(tiny_sd_folder), CACHE)
    assert np.array_equal(pixels(default.images[0]), pixels(after.images[0]))
    euler_a = run(request(tiny_sd_folder, scheduler="Euler a"), CACHE)
    assert not np.array_equal(pixels(default.images[0]), pixels(euler_a.images[0]))


def test_negative_prompt_and_guidance_change_the_image(tiny_sd_folder: Path) -> None:
    base = pixels(run(request(tiny_sd_folder), CACHE).images[0])
    negative = pixels(run(request(tiny_sd_folder, negative_prompt="red"), CACHE).images[0])
    unguided = pixels(run(request(tiny_sd_folder, guidance=1.0), CACHE).images[0])
    assert not np.array_equal(base, negative) and not np.array_equal(base, unguided)


def test_unknown_and_absent_models_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"not in the local Hugging Face cache.*difflab pull sdxl"):
        resolve_model("sdxl")
    with pytest.raises(ValueError, match="pickle"):
        resolve_model(str(tmp_path / "model.ckpt"))
    with pytest.raises(ValueError, match="model must be a preset"):
        resolve_model("no-such-model")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        resolve_model(str(tmp_path / "folder"))


def test_pull_refuses_bundled_and_malformed_names() -> None:
    from difflab.engine.registry import pull

    with pytest.raises(ValueError, match="bundled with difflab"):
        pull("tiny-shapes")
    with pytest.raises(ValueError, match="hub id like 'owner/name'"):
        pull("not a repo")


def test_a_folder_defaults_to_the_size_it_was_trained_at(tiny_sd_folder: Path) -> None:
    import json

    unet = json.loads((tiny_sd_folder / "unet" / "config.json").read_text())
    levels = len(json.loads((tiny_sd_folder / "vae" / "config.json").read_text())["block_out_channels"])
    side = unet["sample_size"] * 2 ** (levels - 1)  # diffusers' own default: sample_size x vae_scale_factor
    model = resolve_model(str(tiny_sd_folder))
    assert (model.width, model.height) == (side, side) and side != 512  # not the SD family's 512
    result = run(build_request(prompt="a red circle", model=str(tiny_sd_folder), steps=2), CACHE)
    assert result.images[0].size == (side, side)
