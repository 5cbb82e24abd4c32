"""img2img on a tiny random StableDiffusionPipeline: sizes, seeds, how strength trades the init image for noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from difflab.engine.metadata import parse_parameters, read_png_metadata
from difflab.engine.modes import file_sha256
from difflab.engine.outputs import save_result
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import RequestError, build_request

CACHE = PipelineCache()


def shapes_image(path: Path, size=(64, 64), colour="red", background="blue") -> Path:
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=colour)
    image.save(path)
    return path


def request(folder: Path, init: Path, **fields):
    return build_request(**{"prompt": "a red circle", "model": str(folder), "steps": 10, "guidance": 7.5,
                            "init_image": str(init), **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def vae_round_trip(folder: Path, path: Path) -> np.ndarray:
    """decode(encode(image)) with the latent distribution's mean: what img2img tends to as strength -> 0."""
    pipeline, _ = CACHE.get(__import__("difflab.engine.registry", fromlist=["x"]).resolve_model(str(folder)))
    processor = pipeline.image_processor
    with torch.no_grad():
        tensor = processor.preprocess(Image.open(path).convert("RGB"))
        latents = pipeline.vae.encode(tensor).latent_dist.mean
        decoded = pipeline.vae.decode(latents).sample
    return pixels(processor.postprocess(decoded, output_type="pil")[0])


def distance(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_output_has_the_init_image_size_and_seeds_are_per_image(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png", size=(48, 32))
    batch = run(request(tiny_sd_folder, init, n=3, seed=4), CACHE)
    assert [image.size for image in batch.images] == [(48, 32)] * 3
    alone = run(request(tiny_sd_folder, init, n=1, seed=6), CACHE)
    assert np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max() <= 2  # image 2 of the batch is seed 6
    assert distance(batch.images[0], batch.images[1]) > 1  # seed + i differ


def test_width_and_height_resize_the_init_image(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png", size=(64, 64))
    result = run(request(tiny_sd_folder, init, width=32, height=48), CACHE)
    assert result.images[0].size == (32, 48)


def test_strength_moves_the_image_from_the_init_image_to_noise(tiny_sd_folder: Path, tmp_path: Path) -> None:
    """How much the init image shows through, measured as the distance between the outputs for two very different
    init images at the same seed: it must fall as strength rises, to almost nothing at strength 1 (the start is
    the init latents noised to the last timestep, where sqrt(alpha_bar) ~ 0.07). And the output moves away from
    the VAE round trip of the init image (an independent reference computed with the VAE alone; this random VAE is
    far from the identity, so the init pixels themselves are not the target) as strength rises."""
    red = shapes_image(tmp_path / "red.png")
    green = shapes_image(tmp_path / "green.png", colour="lime", background="black")
    strengths = (0.1, 0.5, 1.0)
    outputs = {init: [run(request(tiny_sd_folder, init, strength=s), CACHE).images[0] for s in strengths]
               for init in (red, green)}
    shows_through = [distance(a, b) for a, b in zip(outputs[red], outputs[green])]
    assert shows_through[0] > shows_through[1] > shows_through[2], shows_through
    assert shows_through[2] < 0.1 * shows_through[0], shows_through
    reference = vae_round_trip(tiny_sd_folder, red)
    to_reference = [float(np.abs(pixels(image) - reference).mean()) for image in outputs[red]]
    assert to_reference[0] < to_reference[1] < to_reference[2], to_reference


def test_strength_that_leaves_no_step_is_an_error(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png")
    with pytest.raises(ValueError, match=r"strength: 0.05 of 10 steps leaves no denoising step"):
        run(request(tiny_sd_folder, init, strength=0.05), CACHE)


def test_metadata_records_the_init_image_and_strength(tiny_sd_folder: Path, tmp_path: Path) -> None:
    init = shapes_image(tmp_path / "init.png")
    result = run(request(tiny_sd_folder, init, strength=0.6), CACHE)
    [path] = save_result(result, tmp_path / "out")
    text, record = read_png_metadata(path)
    _, _, settings = parse_parameters(text)
    assert settings["Denoising strength"] == "0.6"
    assert settings["Init image hash"] == file_sha256(str(init))[:10]
    assert record["mode"]["mode"] == "img2img" and record["mode"]["strength"] == 0.6
    assert record["mode"]["init_image"] == {"path": str(init.resolve()), "sha256": file_sha256(str(init))}
    assert build_request(**record["request"]) == result.settings.request  # the record replays


BAD = {
    "missing init image": ({"init_image": "nowhere.png"}, "init_image: file 'nowhere.png' does not exist"),
    "init image not an image": ({"init_image": "{tmp}/text.png"}, "init_image: '{tmp}/text.png' is not a readable image"),
    "init size not /8": ({"init_image": "{tmp}/odd.png"}, "init_image: its size 60x64 is not a multiple of 8"),
    "strength without init": ({"strength": 0.5}, "strength: needs init_image"),
    "strength > 1": ({"init_image": "{tmp}/init.png", "strength": 1.5}, "strength: Input should be less than or equal to 1"),
    "strength 0": ({"init_image": "{tmp}/init.png", "strength": 0}, "strength: Input should be greater than 0"),
    "mask without init": ({"mask": "{tmp}/mask.png"}, "mask: needs init_image"),
    "missing mask": ({"init_image": "{tmp}/init.png", "mask": "none.png"}, "mask: file 'none.png' does not exist"),
    "mask of the wrong size": ({"init_image": "{tmp}/init.png", "mask": "{tmp}/small-mask.png"},
                               "mask: size 32x32 differs from init_image's 64x64"),
    "refiner switch without refiner": ({"refiner_switch": 0.8}, "refiner_switch: needs refiner"),
    "refiner switch 1": ({"refiner": "x", "refiner_switch": 1.0}, "refiner_switch: Input should be less than 1"),
    "hires scale 1": ({"hires_scale": 1.0}, "hires_scale: Input should be greater than 1"),
    "hires scale 5": ({"hires_scale": 5}, "hires_scale: Input should be less than or equal to 4"),
    "hires strength without scale": ({"hires_strength": 0.5}, "hires_strength: needs hires_scale"),
    "unknown long prompt mode": ({"long_prompt": "drop"}, "long_prompt: Input should be 'chunk' or 'truncate'"),
}


@pytest.fixture
def image_files(tmp_path: Path) -> Path:
    shapes_image(tmp_path / "init.png")
    shapes_image(tmp_path / "odd.png", size=(60, 64))
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small-mask.png")
    (tmp_path / "text.png").write_text("not a png")
    return tmp_path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_mode_fields_are_named(case: str, image_files: Path) -> None:
    fields, message = BAD[case]
    fields = {key: value.replace("{tmp}", str(image_files)) if isinstance(value, str) else value
              for key, value in fields.items()}
    with pytest.raises(RequestError) as error:
        build_request(prompt="a red circle", **fields)
    assert message.replace("{tmp}", str(image_files)) in str(error.value)
    assert "\n" not in str(error.value)
