"""The guidance interval (engine/guidance_interval.py) on a real tiny random StableDiffusionPipeline, checked
against a hand-written denoising loop: CFG on the first k steps, the conditional prediction alone after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.guidance_interval import guided_steps
from difflab.engine.pipeline import PipelineCache, Settings, run
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request

CACHE = PipelineCache()
PROMPT = "a red circle on the left, blue background"


def request(folder: Path, **fields):
    return build_request(**{"prompt": PROMPT, "model": str(folder), "width": 32, "height": 32, "steps": 6,
                            "guidance": 7.5, "scheduler": "DDIM", **fields})


def reference_loop(folder: Path, steps: int, guided: int, guidance: float, seed: int) -> np.ndarray:
    """DDIM by hand over the pipeline's parts: latents from the seed's CPU generator, CFG for ``guided`` steps."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    tokens = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cond, uncond = pipe.text_encoder(tokens)[0].chunk(2)
        shape = (1, pipe.unet.config.in_channels, 32 // pipe.vae_scale_factor, 32 // pipe.vae_scale_factor)
        latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) * scheduler.init_noise_sigma
        for index, t in enumerate(scheduler.timesteps):
            if index < guided:
                both = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                noise_uncond, noise_cond = both.chunk(2)
                noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            else:
                noise = pipe.unet(latents, t, encoder_hidden_states=cond).sample
            latents = scheduler.step(noise, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((image[0].permute(1, 2, 0).numpy() / 2 + 0.5).clip(0, 1) * 255).round()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("guidance_end, steps, guided", [(1.0, 20, 20), (0.45, 20, 9), (0.5, 6, 3), (0.01, 6, 1)])
def test_guided_steps(guidance_end, steps, guided) -> None:
    assert guided_steps(guidance_end, steps) == guided


@pytest.mark.parametrize("guidance_end", [0.2, 0.5, 1.0])
def test_engine_matches_a_hand_written_loop(tiny_sd_folder: Path, guidance_end: float) -> None:
    # a large scale: on random weights the conditional and unconditional predictions differ little
    image = pixels(run(request(tiny_sd_folder, guidance_end=guidance_end, guidance=30.0, seed=3), CACHE).images[0])
    expected = reference_loop(tiny_sd_folder, 6, guided_steps(guidance_end, 6), 30.0, seed=3)
    assert np.abs(image - expected).max() <= 1  # 8-bit rounding of the same floats
    constant = reference_loop(tiny_sd_folder, 6, 6, 30.0, seed=3)
    if guidance_end < 0.5:  # on random weights the late steps change little; one guided step of six shows
        assert np.abs(image - constant).max() > 3  # the interval changed the image beyond rounding


def test_defaults_and_refusals(tiny_sd_folder: Path, tmp_path: Path) -> None:
    folder = resolve_model(str(tiny_sd_folder))
    assert Settings.of(request(tiny_sd_folder), folder).guidance_end == 1.0  # models that are not presets: every step
    assert Settings.of(request(tiny_sd_folder, guidance_end=0.3), folder).guidance_end == 0.3
    from difflab.engine.registry import PRESETS

    assert PRESETS["tiny-shapes"].guidance_end == 0.7  # measured on the bundled model (its model card)
    mask = tmp_path / "mask.png"
    from PIL import Image

    Image.new("L", (32, 32), 255).save(mask)
    Image.new("RGB", (32, 32)).save(tmp_path / "init.png")
    inpaint = request(tiny_sd_folder, guidance_end=0.5, init_image=str(tmp_path / "init.png"), mask=str(mask))
    with pytest.raises(ValueError, match="guidance_end: .*mask"):
        Settings.of(inpaint, folder)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(Exception, match="guidance_end"):
            request(tiny_sd_folder, guidance_end=bad)


def test_metadata_records_and_replays_the_interval(tiny_sd_folder: Path, tmp_path: Path) -> None:
    from difflab.engine.metadata import parse_parameters, read_png_metadata
    from difflab.engine.outputs import save_result
    from difflab.engine.replay import plan_replay

    result = run(request(tiny_sd_folder, guidance_end=0.5), CACHE)
    path = save_result(result, tmp_path)[0]
    parameters, record = read_png_metadata(path)
    assert parse_parameters(parameters)[2]["Guidance end"] == "0.5"
    assert record["settings"]["guidance_end"] == 0.5
    assert plan_replay(path).request.guidance_end == 0.5
