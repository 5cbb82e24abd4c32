"""Hires fix on a tiny random StableDiffusionPipeline: sizes, the second pass against diffusers called directly,
metadata, progress; and the CLI's img2img/inpainting/hires options with bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.metadata import parse_parameters, read_png_metadata
from difflab.engine.outputs import save_result
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request

from .test_img2img import shapes_image

CACHE = PipelineCache()
runner = CliRunner()


def request(folder: Path, **fields):
    return build_request(**{"prompt": "a red circle", "model": str(folder), "steps": 6, "guidance": 7.5,
                            "width": 32, "height": 32, "seed": 2, **fields})


def test_output_is_scale_times_the_base_size(tiny_sd_folder: Path) -> None:
    assert run(request(tiny_sd_folder, hires_scale=2), CACHE).images[0].size == (64, 64)
    assert run(request(tiny_sd_folder, width=48, height=32, hires_scale=1.5), CACHE).images[0].size == (72, 48)


def test_second_pass_is_lanczos_then_img2img(tiny_sd_folder: Path) -> None:
    """Reference: the first pass alone, upscaled with PIL's Lanczos, then diffusers' img2img pipeline called
    directly with per-image generators seed + i."""
    from diffusers import StableDiffusionImg2ImgPipeline

    hires = run(request(tiny_sd_folder, n=2, hires_scale=2, hires_strength=0.6, hires_steps=5), CACHE)
    first = run(request(tiny_sd_folder, n=2), CACHE).images
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_folder)
    img2img.set_progress_bar_config(disable=True)
    upscaled = [image.resize((64, 64), Image.LANCZOS) for image in first]
    with torch.inference_mode():
        expected = img2img(prompt="a red circle", image=upscaled, strength=0.6, num_inference_steps=5,
                           guidance_scale=7.5, num_images_per_prompt=2,
                           generator=[torch.Generator("cpu").manual_seed(2 + i) for i in range(2)]).images
    for got, want in zip(hires.images, expected):
        assert np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16)).max() <= 1
    plain_upscale = np.asarray(upscaled[0], dtype=np.int16)
    assert np.abs(np.asarray(hires.images[0], dtype=np.int16) - plain_upscale).mean() > 1  # it redrew


def test_metadata_and_progress(tiny_sd_folder: Path, tmp_path: Path) -> None:
    events = []
    result = run(request(tiny_sd_folder, hires_scale=2, hires_strength=0.5), CACHE,
                 on_step=lambda done, total: events.append((done, total)))
    assert events[-1] == (6 + 3, 6 + 3)  # both passes: 6 steps, then int(6 * 0.5)
    [path] = save_result(result, tmp_path)
    text, record = read_png_metadata(path)
    _, _, settings = parse_parameters(text)
    assert (settings["Denoising strength"], settings["Hires upscale"], settings["Hires steps"],
            settings["Hires upscaler"], settings["Size"]) == ("0.5", "2", "6", "Lanczos", "32x32")
    assert record["mode"]["hires"] == {"scale": 2.0, "strength": 0.5, "steps": 6, "upscaler": "Lanczos",
                                       "width": 64, "height": 64}


def test_cli_img2img_inpaint_and_hires(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png", size=(32, 32))
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    result = runner.invoke(app, ["generate", "a red circle", "--model", str(tiny_sd_folder), "--steps", "4",
                                 "--init-image", str(init), "--mask", str(mask), "--strength", "0.8",
                                 "--hires-scale", "2", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    [path] = [Path(line) for line in result.output.split() if line.endswith(".png")]
    assert Image.open(path).size == (64, 64)
    _, record = read_png_metadata(path)
    assert record["mode"]["mode"] == "inpaint" and record["mode"]["strength"] == 0.8


@pytest.mark.parametrize("arguments,message", [
    (["--init-image", "missing.png"], "init_image: file 'missing.png' does not exist"),
    (["--init-image", "{tmp}/init.png", "--mask", "{tmp}/small.png"], "mask: size 16x16 differs from init_image's"),
    (["--strength", "0.5"], "strength: needs init_image"),
    (["--hires-scale", "8"], "hires_scale: Input should be less than or equal to 4"),
    (["--refiner-switch", "0.8"], "refiner_switch: needs refiner"),
    (["--refiner", "{model}"], "refiner: needs an SDXL base model"),
    (["--long-prompt", "drop"], "long_prompt: Input should be 'chunk' or 'truncate'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_sd_folder: Path, tmp_path: Path, arguments, message):
    shapes_image(tmp_path / "init.png", size=(32, 32))
    Image.new("L", (16, 16), 255).save(tmp_path / "small.png")
    arguments = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(tiny_sd_folder)) for a in arguments]
    result = runner.invoke(app, ["generate", "a red circle", "--model", str(tiny_sd_folder), "--steps", "2",
                                 *arguments, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
