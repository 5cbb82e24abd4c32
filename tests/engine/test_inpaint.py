"""Inpainting on a tiny random StableDiffusionPipeline: the kept region is the original, the masked one is redrawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from difflab.engine.metadata import parse_parameters, read_png_metadata
from difflab.engine.modes import file_sha256
from difflab.engine.outputs import save_result
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request
from tests.engine.test_img2img import shapes_image

CACHE = PipelineCache()


def right_half_mask(path: Path, size=(64, 64)) -> Path:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, size[0] // 2:] = 255  # white = redraw
    Image.fromarray(mask, "L").save(path)
    return path


def request(folder: Path, init: Path, mask: Path, **fields):
    return build_request(**{"prompt": "a red circle", "model": str(folder), "steps": 8, "guidance": 7.5,
                            "init_image": str(init), "mask": str(mask), **fields})


def test_outside_the_mask_is_the_original_and_inside_is_redrawn(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png")
    mask = right_half_mask(tmp_path / "mask.png")
    original = np.asarray(Image.open(init).convert("RGB"), dtype=np.int16)
    result = run(request(tiny_sd_folder, init, mask, n=2, strength=1.0), CACHE)
    for image in result.images:
        assert image.size == (64, 64)
        out = np.asarray(image, dtype=np.int16)
        assert np.array_equal(out[:, :32], original[:, :32])  # kept exactly (pasted back, A1111's overlay)
        assert np.abs(out[:, 32:] - original[:, 32:]).mean() > 20  # the random model redraws the masked half
    first, second = (np.asarray(image, dtype=np.int16) for image in result.images)
    assert np.abs(first[:, 32:] - second[:, 32:]).mean() > 1  # seed + i: different redraws


def test_an_all_white_mask_is_img2img(tiny_sd_folder: Path, tmp_path: Path) -> None:
    """An all-white mask redraws everything: the same pipeline math as img2img at the same strength and seed,
    except that diffusers' inpainting pipeline re-noises the init latents itself; the outputs must match closely."""
    init = shapes_image(tmp_path / "init.png")
    white = tmp_path / "white.png"
    Image.new("L", (64, 64), 255).save(white)
    inpainted = run(request(tiny_sd_folder, init, white, strength=0.5), CACHE).images[0]
    img2img = run(build_request(prompt="a red circle", model=str(tiny_sd_folder), steps=8, guidance=7.5,
                                init_image=str(init), strength=0.5), CACHE).images[0]
    difference = np.abs(np.asarray(inpainted, dtype=np.int16) - np.asarray(img2img, dtype=np.int16))
    assert difference.max() <= 2, difference.max()


def test_metadata_records_the_mask(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png")
    mask = right_half_mask(tmp_path / "mask.png")
    [path] = save_result(run(request(tiny_sd_folder, init, mask), CACHE), tmp_path / "out")
    text, record = read_png_metadata(path)
    _, _, settings = parse_parameters(text)
    assert settings["Mask hash"] == file_sha256(str(mask))[:10] and settings["Denoising strength"] == "0.75"
    assert record["mode"]["mode"] == "inpaint" and record["mode"]["mask"]["sha256"] == file_sha256(str(mask))
