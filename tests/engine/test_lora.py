"""LoRAs in the engine, on a tiny random SD pipeline, checked against plain diffusers + peft as the reference.

LoRA files here are made with peft and diffusers' own save_lora_weights (not difflab's trainer), with random
B matrices so that every LoRA visibly changes the image: a test that a LoRA "works" could otherwise pass on a
no-op. Images are compared as 8-bit pixels; "equal" allows 2/255 where two different code paths draw the same
image (the engine passes prompt embeddings, diffusers the prompt string), and means bit-identical otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.lora import LoraError, applied_loras, parse_lora_spec, resolve_lora
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import RequestError, build_request

CACHE = PipelineCache()
PROMPT = "a red circle on the left, blue background"
TOLERANCE = 2  # of 255, between the engine and plain diffusers (see the module docstring)


def _request(folder: Path, **fields):
    return build_request(**{"prompt": PROMPT, "model": str(folder), "width": 64, "height": 64, "steps": 3,
                            "guidance": 7.5, **fields})


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _random_lora(folder: Path, out: Path, seed: int, text_encoder: bool = False, rank: int = 2) -> Path:
    """A diffusers-format LoRA of random weights, saved exactly as diffusers' training examples save one."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {}
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, parameter in module.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
    layers["unet_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    if text_encoder:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    StableDiffusionPipeline.save_lora_weights(str(out), **layers, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def loras(tiny_sd_folder: Path, tmp_path_factory) -> Path:  # noqa: F811
    """A LoRA folder: style_a.safetensors (U-Net), style_b.safetensors (U-Net + text encoder), style_a_kohya."""
    from safetensors.torch import load_file, save_file

    from difflab.train.lora import to_kohya

    root = tmp_path_factory.mktemp("loras")
    work = tmp_path_factory.mktemp("lora-work")
    for name, seed, text_encoder in (("style_a", 1, False), ("style_b", 2, True)):
        file = _random_lora(tiny_sd_folder, work / name, seed, text_encoder)
        shutil.copy(file, root / f"{name}.safetensors")
    # the same weights as style_a in kohya's format, through difflab's exporter
    diffusers_format = load_file(str(root / "style_a.safetensors"))
    peft_format = {k.removeprefix("unet.").replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
                   for k, v in diffusers_format.items()}
    save_file(to_kohya(peft_format, None, alpha=2.0), str(root / "style_a_kohya.safetensors"))
    return root


def _diffusers_images(folder: Path, files: list[tuple[Path, float]], seed: int = 0) -> np.ndarray:
    """The reference: plain diffusers, the model's own scheduler, load_lora_weights + set_adapters."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (file, _) in enumerate(files):
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=f"a{i}")
        names.append(f"a{i}")
    if names:
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in files])
    with torch.no_grad():
        image = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, width=64, height=64,
                     generator=[torch.Generator("cpu").manual_seed(seed)]).images[0]
    return _pixels(image)


# --- specs and names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, source, weight", [
    ("style", "style", 1.0), ("style:0.8", "style", 0.8), ("dir/x.safetensors:-0.5", "dir/x.safetensors", -0.5),
    ("C:\\loras\\x.safetensors", "C:\\loras\\x.safetensors", 1.0), (" style : 2 ", "style", 2.0),
])
def test_specs_parse(text, source, weight):
    spec = parse_lora_spec(text)
    assert (spec.source, spec.weight) == (source, weight)


@pytest.mark.parametrize("text", ["", ":0.5", "style:nan", "style:100"])
def test_bad_specs_are_request_errors_naming_the_field(text):
    with pytest.raises(RequestError, match="loras"):
        build_request(prompt="a", loras=[text])


def test_names_resolve_inside_the_folder_only(loras: Path, tmp_path: Path):
    assert resolve_lora("style_a:0.5", loras).file == loras / "style_a.safetensors"
    assert resolve_lora("style_a_kohya", loras).format == "kohya"
    (tmp_path / "outside.safetensors").write_bytes((loras / "style_a.safetensors").read_bytes())
    (loras / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    try:
        with pytest.raises(LoraError, match="outside the LoRA folder"):
            resolve_lora("link", loras)
    finally:
        (loras / "link.safetensors").unlink()
    with pytest.raises(LoraError, match="not a path"):
        resolve_lora("../outside", loras, allow_paths=False)
    with pytest.raises(LoraError, match="available: style_a, style_a_kohya, style_b"):
        resolve_lora("nope", loras)
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(LoraError, match="pickles"):
        resolve_lora(str(tmp_path / "model.ckpt"), loras)


# --- images ------------------------------------------------------------------------------------------------------


def test_engine_matches_plain_diffusers_and_the_lora_changes_the_image(tiny_sd_folder: Path, loras: Path):
    base = _pixels(run(_request(tiny_sd_folder), CACHE).images[0])
    engine = _pixels(run(_request(tiny_sd_folder, loras=[str(loras / "style_b.safetensors")]), CACHE).images[0])
    reference = _diffusers_images(tiny_sd_folder, [(loras / "style_b.safetensors", 1.0)])
    assert np.abs(engine - base).max() > 20, "the LoRA does not change the image: the test could not fail"
    assert np.abs(engine - reference).max() <= TOLERANCE


def test_weight_zero_equals_no_lora(tiny_sd_folder: Path, loras: Path):
    base = _pixels(run(_request(tiny_sd_folder), CACHE).images[0])
    zero = _pixels(run(_request(tiny_sd_folder, loras=[str(loras / "style_a.safetensors") + ":0"]), CACHE).images[0])
    assert np.array_equal(zero, base)


def test_two_loras_combine_with_their_weights(tiny_sd_folder: Path, loras: Path):
    a, b = loras / "style_a.safetensors", loras / "style_b.safetensors"
    both = _pixels(run(_request(tiny_sd_folder, loras=[f"{a}:0.7", f"{b}:0.4"]), CACHE).images[0])
    only_a = _pixels(run(_request(tiny_sd_folder, loras=[f"{a}:0.7"]), CACHE).images[0])
    reference = _diffusers_images(tiny_sd_folder, [(a, 0.7), (b, 0.4)])
    assert np.abs(both - reference).max() <= TOLERANCE
    assert np.abs(both - only_a).max() > 10


def test_kohya_file_draws_the_same_images_as_the_diffusers_file(tiny_sd_folder: Path, loras: Path):
    diffusers_file = run(_request(tiny_sd_folder, loras=[str(loras / "style_a.safetensors")]), CACHE)
    kohya_file = run(_request(tiny_sd_folder, loras=[str(loras / "style_a_kohya.safetensors")]), CACHE)
    assert np.array_equal(_pixels(diffusers_file.images[0]), _pixels(kohya_file.images[0]))


def test_peft_folder_draws_the_same_images_as_the_diffusers_file(tiny_sd_folder: Path, loras: Path, tmp_path):
    """A peft adapter folder (adapter_config.json + adapter_model.safetensors) of style_a's weights."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    weights = load_file(str(loras / "style_a.safetensors"))
    peft_weights = {"base_model.model." + k.removeprefix("unet.").replace(".lora.down.", ".lora_A.")
                    .replace(".lora.up.", ".lora_B."): v for k, v in weights.items()}
    folder = tmp_path / "style_a_peft"
    folder.mkdir()
    save_file(peft_weights, str(folder / "adapter_model.safetensors"))
    LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]).save_pretrained(str(folder))
    assert resolve_lora(str(folder)).format == "peft"
    peft = run(_request(tiny_sd_folder, loras=[str(folder)]), CACHE)
    diffusers_file = run(_request(tiny_sd_folder, loras=[str(loras / "style_a.safetensors")]), CACHE)
    assert np.array_equal(_pixels(peft.images[0]), _pixels(diffusers_file.images[0]))


def test_no_lora_leaks_into_the_next_request(tiny_sd_folder: Path, loras: Path):
    run(_request(tiny_sd_folder, loras=[str(loras / "style_b.safetensors") + ":0.9"]), CACHE)
    after = _pixels(run(_request(tiny_sd_folder), CACHE).images[0])
    fresh = _pixels(run(_request(tiny_sd_folder), PipelineCache()).images[0])
    assert np.array_equal(after, fresh)
    pipeline, _ = CACHE.get(__import__("difflab.engine.registry", fromlist=["x"]).resolve_model(str(tiny_sd_folder)))
    assert not getattr(pipeline.unet, "peft_config", {}), "adapters left on the cached U-Net"


def test_fuse_then_unload_restores_the_base_weights(tiny_sd_folder: Path, loras: Path):
    """Fusing adds the weighted update into W and unfusing subtracts it: W comes back to float rounding."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    specs = [resolve_lora(f"{loras / 'style_a.safetensors'}:0.7"), resolve_lora(f"{loras / 'style_b.safetensors'}:0.4")]
    with applied_loras(pipe, specs, fuse=True):
        fused_q = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert (fused_q - before[key]).abs().max() > 1e-3  # the fuse did change W
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-5)


@pytest.mark.parametrize("damage, message", [
    ("rename_all", "match no layer|does not fit"),
    ("rename_some", "of its .* LoRA layers match no layer"),
    ("wrong_shape", "does not fit this model"),
    ("not_lora", "holds no LoRA weights"),
])
def test_incompatible_lora_is_an_error_naming_the_file(tiny_sd_folder: Path, loras: Path, tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(loras / "style_a.safetensors"))
    if damage == "rename_all":  # a LoRA for a deeper U-Net (another base model)
        weights = {k.replace("down_blocks.0", "down_blocks.7").replace("up_blocks.", "up_blocks.9"): v
                   for k, v in weights.items() if "mid_block" not in k}
    elif damage == "rename_some":
        weights = {(k.replace("down_blocks.0", "down_blocks.7") if "down_blocks.0" in k else k): v
                   for k, v in weights.items()}
    elif damage == "wrong_shape":
        weights = {k: (torch.zeros(v.shape[0], v.shape[1] + 3) if ".lora.down." in k else v)
                   for k, v in weights.items()}
    else:
        weights = {"unet.conv_in.weight": torch.zeros(3)}
    bad = tmp_path / f"{damage}.safetensors"
    save_file(weights, str(bad))
    base = _pixels(run(_request(tiny_sd_folder), CACHE).images[0])
    with pytest.raises(LoraError, match=message) as error:
        run(_request(tiny_sd_folder, loras=[str(bad)]), CACHE)
    assert str(bad) in str(error.value)
    assert np.array_equal(_pixels(run(_request(tiny_sd_folder), CACHE).images[0]), base)  # nothing left behind


# --- metadata and the command line -----------------------------------------------------------------------------


def test_png_metadata_has_a1111_lora_tags_and_hashes(tiny_sd_folder: Path, loras: Path, tmp_path: Path,
                                                      monkeypatch):
    from difflab.engine.metadata import parse_parameters, read_png_metadata
    from difflab.engine.outputs import save_result

    monkeypatch.setenv("DIFFLAB_LORA_DIR", str(loras))
    result = run(_request(tiny_sd_folder, loras=["style_a:0.8", "style_b:0.5"]), CACHE)
    path = save_result(result, tmp_path)[0]
    parameters, record = read_png_metadata(path)
    prompt, _, settings = parse_parameters(parameters)
    assert prompt == PROMPT + " <lora:style_a:0.8> <lora:style_b:0.5>"
    data = (loras / "style_a.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header:]).hexdigest()[:12]  # A1111's "addnet" hash: tensors, not header
    assert settings["Lora hashes"].startswith(f"style_a: {expected}, style_b: ")
    assert record["request"]["loras"] == ["style_a:0.8", "style_b:0.5"]
    assert [lora["name"] for lora in record["loras"]] == ["style_a", "style_b"]


def test_generate_cli_takes_repeatable_lora_and_refuses_a_missing_one(tiny_sd_folder: Path, loras: Path,
                                                                     tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from difflab.cli import app
    from difflab.engine.metadata import read_png_metadata

    monkeypatch.setenv("DIFFLAB_LORA_DIR", str(loras))
    common = ["generate", "a red circle", "--model", str(tiny_sd_folder), "--width", "64", "--height", "64",
              "--steps", "2"]
    missing = CliRunner().invoke(app, common + ["--lora", "nope:0.5", "-o", str(tmp_path / "a")])
    assert missing.exit_code == 2 and "nope" in missing.output
    assert not (tmp_path / "a").exists()
    ok = CliRunner().invoke(app, common + ["--lora", "style_a:0.5", "--lora", "style_b", "-o", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    parameters, _ = read_png_metadata(next((tmp_path / "b").glob("*.png")))
    assert "<lora:style_a:0.5> <lora:style_b:1>" in parameters
