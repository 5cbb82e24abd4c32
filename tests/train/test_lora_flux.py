"""LoRA training on a tiny random Flux pipeline (transformer, flow matching, packed latents, guidance-distilled like
FLUX.1-dev; with a CLIP text-encoder LoRA): the file loads in plain diffusers and draws what the trained adapters draw in memory, the engine draws
it (weight 0 = the base, nothing leaks), and settings that have no Flux meaning are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SIDE = 64


def _draw(pipe, prompt="a red hexagon", seed=0):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=3, height=SIDE, width=SIDE, max_sequence_length=32,
                    generator=[torch.Generator().manual_seed(seed)], output_type="np").images[0]


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory) -> Path:
    from tests.engine.family_fixtures import save_family_pipeline

    return save_family_pipeline("flux", tmp_path_factory.mktemp("flux"))


def _config(flux_folder: Path, data: Path, **overrides):
    from difflab.train.lora_config import LoraTrainConfig

    fields = dict(base=str(flux_folder), data=str(data), trigger="hexagon", rank=2, alpha=4.0, steps=4, batch_size=2,
                  warmup_steps=1, checkpoint_every=4, learning_rate=5e-2, seed=3, resolution=SIDE)
    return LoraTrainConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def trained(flux_folder, tmp_path_factory):
    from difflab.data.captioned_folder import write_shape_set
    from difflab.train.lora import train_lora

    root = tmp_path_factory.mktemp("flux-lora")
    write_shape_set(root / "data", "hexagon", n=4, seed=0)
    config = _config(flux_folder, root / "data", network="transformer", foreground_weight=4.0, masks="auto",
                     validate_every=4, text_encoder_lora=True)
    events = list(train_lora(config, root / "lora", device="cpu"))
    return config, root / "lora", events


def test_plain_diffusers_reload_equals_the_trained_weights(trained, flux_folder):
    import json

    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from tests.train.lora_reference import assert_plain_diffusers_draws_it, restore_trained

    config, out, events = trained
    assert len(events) == 4 and all(np.isfinite(e.loss) for e in events)
    assert (out / "validation" / "step-000004.png").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["files"] == {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "kohya/lora.safetensors"}
    in_memory, params = restore_trained(config, out)
    assert set(params) == {"transformer", "text_encoder"}  # CLIP gets adapters, T5 stays frozen (diffusers' example)
    expected = _draw(in_memory)

    pipe = assert_plain_diffusers_draws_it(FluxPipeline, flux_folder, out, expected, _draw)
    # the context stream's layers ("transformer" network) are in the file, under diffusers' transformer prefix
    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert any(k.startswith("transformer.") and ".add_q_proj.lora_A" in k for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys) and not any(k.startswith("text_encoder_2.") for k in keys)
    assert pipe.text_encoder.peft_config and not getattr(pipe.text_encoder_2, "peft_config", None)


# BFL's layers of the tiny model (one double block, one single block) and the diffusers layers each stacks on its
# output axis, written out from BFL's layout (diffusers' single-file converter splits them in this order)
BFL_LAYERS = {
    "lora_unet_double_blocks_0_img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                               "transformer_blocks.0.attn.to_v"],
    "lora_unet_double_blocks_0_txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj",
                                               "transformer_blocks.0.attn.add_k_proj",
                                               "transformer_blocks.0.attn.add_v_proj"],
    "lora_unet_double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
    "lora_unet_double_blocks_0_txt_attn_proj": ["transformer_blocks.0.attn.to_add_out"],
    "lora_unet_double_blocks_0_img_mlp_0": ["transformer_blocks.0.ff.net.0.proj"],
    "lora_unet_double_blocks_0_img_mlp_2": ["transformer_blocks.0.ff.net.2"],
    "lora_unet_double_blocks_0_txt_mlp_0": ["transformer_blocks.0.ff_context.net.0.proj"],
    "lora_unet_double_blocks_0_txt_mlp_2": ["transformer_blocks.0.ff_context.net.2"],
    "lora_unet_single_blocks_0_linear1": ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                          "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"],
}


def _weights(module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def test_kohya_export_is_the_lora_on_bfl_fused_layers(trained, flux_folder):
    """Applied the way Forge and ComfyUI apply a kohya Flux LoRA (fused BFL weight += up @ down x alpha / rank),
    the export changes every layer exactly as diffusers' fuse_lora of the diffusers file does; and diffusers' own
    kohya converter splits the fused qkv back into the trained to_q/to_k/to_v and CLIP adapters."""
    from diffusers import FluxPipeline
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file

    _, out, _ = trained
    kohya_file = out / "kohya" / "lora.safetensors"
    kohya = load_file(str(kohya_file))
    with safe_open(str(kohya_file), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "flux1"
    assert {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0]
            for k in kohya if k.startswith("lora_unet_")} == set(BFL_LAYERS)

    pipe = FluxPipeline.from_pretrained(str(flux_folder))
    base = _weights(pipe.transformer)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora(components=["transformer", "text_encoder"])
    pipe.unload_lora_weights()
    fused = _weights(pipe.transformer)
    changed = 0
    for name, parts in BFL_LAYERS.items():
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        delta = up @ down * (kohya[f"{name}.alpha"] / down.shape[0])
        expected = torch.cat([fused[p] for p in parts]) - torch.cat([base[p] for p in parts])
        torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
        changed += int(expected.abs().max() > 1e-4)
    assert changed == len(BFL_LAYERS), "a layer the LoRA trained did not change: the test could not fail"
    # the zero part: the attention-only single block leaves proj_mlp as it was
    assert torch.equal(fused["single_transformer_blocks.0.proj_mlp"], base["single_transformer_blocks.0.proj_mlp"])

    # diffusers' converter hard-codes FLUX.1's single-block widths (3072, 12288), so it reads the double blocks
    # and CLIP here; the single block is checked above
    diffusers_file = load_file(str(out / "pytorch_lora_weights.safetensors"))
    converted = _convert_kohya_flux_lora_to_diffusers({k: v for k, v in kohya.items() if "single_blocks" not in k})
    for key in converted:
        if ".lora_A." not in key and ".lora.down." not in key:
            continue
        up_key = key.replace(".lora_A.", ".lora_B.").replace(".lora.down.", ".lora.up.")
        ours = key.replace(".lora.down.", ".lora_A.") if key.startswith("text_encoder.") else key
        if ours not in diffusers_file and key.startswith("text_encoder."):
            ours = ours.replace("text_encoder.text_model.", "text_encoder.")
        ours_up = ours.replace(".lora_A.", ".lora_B.")
        # the converter folds kohya's alpha / rank into the weights; the diffusers file's is 4 / 2
        torch.testing.assert_close(converted[up_key] @ converted[key],
                                   diffusers_file[ours_up] @ diffusers_file[ours] * 2, rtol=1e-4, atol=1e-6)
    assert any(k.startswith("text_encoder.") for k in converted)
    assert any(".attn.to_q.lora_A" in k for k in converted)


def test_the_engine_refuses_a_kohya_flux_file_of_other_widths_by_name(trained, flux_folder):
    """diffusers reads kohya Flux files for FLUX.1's widths only; on the tiny model that is a clear error."""
    from difflab.engine.lora import LoraError
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    _, out, _ = trained
    request = build_request(prompt="a red hexagon", model=str(flux_folder), steps=1, seed=0, width=SIDE, height=SIDE,
                            loras=[str(out / "kohya" / "lora.safetensors")])
    with pytest.raises(LoraError, match="lora.safetensors' does not fit this model"):
        run(request, PipelineCache())


def test_the_engine_draws_it_and_weight_zero_is_the_base(trained, flux_folder):
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    _, out, _ = trained
    cache = PipelineCache()

    def draw(loras):
        request = build_request(prompt="a red hexagon", model=str(flux_folder), steps=3, seed=0, width=SIDE,
                                height=SIDE, loras=loras)
        return np.asarray(run(request, cache).images[0], dtype=np.int16)

    base, zero, full = draw([]), draw([f"{out}:0"]), draw([f"{out}:1"])
    assert np.abs(zero - base).max() <= 1
    assert np.abs(full - base).max() > 10
    assert np.array_equal(draw([]), base)  # unloaded after the request


@pytest.mark.parametrize("field, value, message", [
    ("network", "locon", "a Flux base takes attention or transformer"),
    ("min_snr_gamma", 5.0, "Flux trains by flow matching"),
])
def test_settings_without_a_flux_meaning_are_refused(field, value, message, flux_folder, tmp_path):
    from difflab.train.lora import load_base

    with pytest.raises(ValueError, match=message):
        load_base(_config(flux_folder, tmp_path, **{field: value}))


def test_resume_continues_exactly(flux_folder, trained, tmp_path):
    """Stop after 2 of 4 steps and resume: the same losses and LoRA weights as one run (flow matching draws its
    sigmas and noise from the step's generator too)."""
    from safetensors.torch import load_file

    from difflab.train.lora import train_lora

    config, out, _ = trained
    data = Path(config.data)
    whole = list(train_lora(_config(flux_folder, data), tmp_path / "whole", device="cpu"))
    first = list(train_lora(_config(flux_folder, data, steps=2), tmp_path / "split", device="cpu"))
    second = list(train_lora(_config(flux_folder, data), tmp_path / "split", resume=True, device="cpu"))
    assert [e.step for e in second] == [3, 4]
    assert [e.loss for e in first + second] == pytest.approx([e.loss for e in whole], rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
