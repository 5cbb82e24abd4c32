"""Every model family's txt2img path through the engine, on tiny random pipelines saved as diffusers folders.

The folders are found by ``registry.resolve_model`` from their model_index.json, loaded by the engine's cache,
and run with ``engine.pipeline.run``: the same code path a real SDXL, Flux or SD3 download takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from difflab.engine.pipeline import PipelineCache, Settings, run
from difflab.engine.registry import PRESETS, resolve_model
from difflab.engine.request import build_request

from .family_fixtures import save_family_pipeline, t5_tokenizer

FAMILIES = ("sdxl", "flux", "sd3")
CACHE = PipelineCache()


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {family: save_family_pipeline(family, tmp_path_factory.mktemp(family)) for family in FAMILIES}


def request(folder: Path, **fields):
    return build_request(**{"prompt": "a red circle on the left, blue background", "model": str(folder),
                            "width": 64, "height": 64, "steps": 3, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_t5_tokenizer_gives_different_words_different_ids(family_folders) -> None:
    """transformers 5 ignores some tokenizer constructor arguments silently (every word -> one id); check both the
    in-memory tokenizer and the one the Flux pipeline folder saved and reloads."""
    from transformers import AutoTokenizer

    for tokenizer in (t5_tokenizer(), AutoTokenizer.from_pretrained(family_folders["flux"] / "tokenizer_2")):
        red, blue, circle = (tokenizer(word).input_ids for word in ("red", "blue", "circle"))
        assert red[-1] == blue[-1] == tokenizer.eos_token_id == 1
        assert len({red[0], blue[0], circle[0]}) == 3 and tokenizer.unk_token_id not in (red[0], blue[0], circle[0])
        assert tokenizer.unk_token_id in tokenizer("zebra").input_ids  # an unknown word is <unk>, not a known id


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_and_txt2img_runs(family_folders, family: str) -> None:
    folder = family_folders[family]
    model = resolve_model(str(folder))
    assert model.family == family and not model.single_file
    first = run(request(folder, n=2), CACHE)
    assert [im.size for im in first.images] == [(64, 64), (64, 64)] and first.seeds == [0, 1]
    a, b = pixels(first.images[0]), pixels(first.images[1])
    assert a.std() > 5 and not np.array_equal(a, b)  # a real picture, and seed + i differs
    again = run(request(folder, n=2), CACHE)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(first.images, again.images))


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_models_get_their_family_defaults(family_folders, family: str) -> None:
    settings = Settings.of(build_request(prompt="a red circle", model=str(family_folders[family])),
                           resolve_model(str(family_folders[family])))
    if family == "sdxl":  # a U-Net folder: the size it was trained at, as diffusers computes its default
        import json

        folder = family_folders[family]
        levels = len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"])
        side = json.loads((folder / "unet" / "config.json").read_text())["sample_size"] * 2 ** (levels - 1)
        assert (settings.width, settings.height) == (side, side) != (1024, 1024)
    else:  # transformer families: the family's size
        assert (settings.width, settings.height) == (1024, 1024)
    assert settings.steps == 30 if family == "sdxl" else settings.steps == 28


def test_presets_carry_family_defaults() -> None:
    schnell, dev, sd3 = PRESETS["flux-schnell"], PRESETS["flux-dev"], PRESETS["sd3.5-medium"]
    assert (schnell.family, schnell.steps, schnell.guidance) == ("flux", 4, 0.0)
    assert (dev.family, dev.guidance) == ("flux", 3.5) and sd3.family == "sd3"
    assert (PRESETS["sdxl"].width, PRESETS["sd15"].width) == (1024, 512)


@pytest.mark.parametrize("family", ("sdxl", "sd3"))
def test_negative_prompt_steers_cfg_families(family_folders, family: str) -> None:
    base = pixels(run(request(family_folders[family], guidance=5.0), CACHE).images[0])
    negative = pixels(run(request(family_folders[family], guidance=5.0, negative_prompt="red circle"), CACHE).images[0])
    assert np.abs(base - negative).max() > 0


def test_flux_has_no_negative_prompt_and_guidance_is_an_input(family_folders) -> None:
    folder = family_folders["flux"]
    with pytest.raises(ValueError, match="^negative_prompt: the flux family has no negative prompt"):
        run(request(folder, negative_prompt="blue"), CACHE)
    # guidance-distilled (FLUX.1-dev): the scale is fed to the transformer, one forward pass per step, no CFG
    low, high = (pixels(run(request(folder, guidance=g), CACHE).images[0]) for g in (1.0, 3.5))
    assert np.abs(low - high).max() > 0


@pytest.mark.parametrize("family", ("flux", "sd3"))
def test_flow_matching_families_refuse_noise_prediction_samplers(family_folders, family: str) -> None:
    folder = family_folders[family]
    with pytest.raises(ValueError, match=r"^scheduler: 'DPM\+\+ 2M Karras' is a sampler for noise-prediction models"):
        run(request(folder, scheduler="DPM++ 2M Karras"), CACHE)
    # 'Euler' is what FlowMatchEulerDiscreteScheduler is: the same image as the model's own scheduler
    euler = run(request(folder, scheduler="Euler"), CACHE)
    default = run(request(folder), CACHE)
    assert np.array_equal(pixels(euler.images[0]), pixels(default.images[0]))
    assert type(CACHE.get(resolve_model(str(folder)))[0].scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_sdxl_takes_a1111_samplers(family_folders) -> None:
    folder = family_folders["sdxl"]
    default = pixels(run(request(folder), CACHE).images[0])
    euler_a = pixels(run(request(folder, scheduler="Euler a"), CACHE).images[0])
    assert not np.array_equal(default, euler_a)
    assert type(CACHE.get(resolve_model(str(folder)))[0].scheduler).__name__ == "EulerAncestralDiscreteScheduler"
