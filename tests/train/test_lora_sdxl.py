"""LoRA training on a tiny random SDXL pipeline (both text encoders, micro-conditioning): the files load in plain
diffusers and give what the trained adapters give in memory, the kohya export names both encoders and round-trips,
and the engine draws it; an SD3 base is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open


def _draw(pipe, prompt="a red hexagon", seed=0):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=3, generator=[torch.Generator().manual_seed(seed)],
                    output_type="np").images[0]


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    from tests.engine.family_fixtures import save_family_pipeline

    return save_family_pipeline("sdxl", tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def trained(sdxl_folder, tmp_path_factory):
    from difflab.data.captioned_folder import write_shape_set
    from difflab.train.lora import train_lora
    from difflab.train.lora_config import LoraTrainConfig

    root = tmp_path_factory.mktemp("sdxl-lora")
    write_shape_set(root / "data", "hexagon", n=4, seed=0)
    config = LoraTrainConfig(base=str(sdxl_folder), data=str(root / "data"), trigger="hexagon", rank=2, alpha=4.0,
                             steps=4, batch_size=2, warmup_steps=1, checkpoint_every=4, learning_rate=5e-2, seed=3,
                             text_encoder_lora=True, min_snr_gamma=5.0, validate_every=4)
    events = list(train_lora(config, root / "lora", device="cpu"))
    return config, root / "lora", events


def test_plain_diffusers_reload_equals_the_trained_weights(trained, sdxl_folder):
    """Reference: peft's own forward with the trained adapters put back in memory from the training state."""
    from diffusers import StableDiffusionXLPipeline

    from tests.train.lora_reference import assert_plain_diffusers_draws_it, restore_trained

    config, out, events = trained
    assert len(events) == 4 and all(np.isfinite(e.loss) for e in events)
    assert (out / "validation" / "step-000004.png").is_file() and (out / "loss.png").is_file()
    in_memory, params = restore_trained(config, out)
    assert set(params) == {"unet", "text_encoder", "text_encoder_2"}  # both CLIP encoders get adapters
    expected = _draw(in_memory)

    pipe = assert_plain_diffusers_draws_it(StableDiffusionXLPipeline, sdxl_folder, out, expected, _draw)
    # the text encoders' adapters are in the file and loaded, not only the U-Net's
    assert pipe.text_encoder_2.peft_config and pipe.text_encoder.peft_config


def test_kohya_export_names_both_encoders_and_round_trips(trained, sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    _, out, _ = trained
    kohya = out / "kohya" / f"{out.name}.safetensors"
    with safe_open(str(kohya), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert any(k.startswith("lora_unet_") for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert not any(k.startswith("lora_te_") for k in keys)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder))
    pipe.load_lora_weights(str(out))
    from_diffusers = _draw(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(kohya.parent), weight_name=kohya.name)  # diffusers' own kohya converter
    np.testing.assert_allclose(_draw(pipe), from_diffusers, atol=1e-6)


def test_the_engine_draws_it_and_weight_zero_is_the_base(trained, sdxl_folder):
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    _, out, _ = trained
    cache = PipelineCache()

    def draw(loras):
        return np.asarray(run(build_request(prompt="a red hexagon", model=str(sdxl_folder), steps=3, seed=0,
                                            loras=loras), cache).images[0], dtype=np.int16)

    base, zero, full = draw([]), draw([f"{out}:0"]), draw([f"{out}:1"])
    assert np.abs(zero - base).max() <= 1  # weight 0: the base model (fused at scale 0)
    assert np.abs(full - base).max() > 10
    again = draw([])
    assert np.array_equal(again, base)  # unloaded after the request: nothing leaks into the next


def test_an_sd3_base_is_refused_by_name(tmp_path):
    from difflab.train.lora import load_base
    from difflab.train.lora_config import LoraTrainConfig
    from tests.engine.family_fixtures import save_family_pipeline

    sd3 = save_family_pipeline("sd3", tmp_path / "sd3")
    with pytest.raises(ValueError, match="LoRA training supports the sd, sdxl, flux families for now; .* is sd3"):
        load_base(LoraTrainConfig(base=str(sd3), data="unused", trigger="hexagon"))
