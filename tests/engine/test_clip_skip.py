"""Clip skip (A1111's CLIP_stop_at_last_layers, "Clip skip: N"): the text encoder's N-th hidden state from the end,
checked against diffusers' own ``clip_skip`` (which counts N - 1) on tiny random SD and SDXL pipelines, through the
encodings and a whole generation; recorded in the infotext and read back by replay.

diffusers applies its clip_skip to the prompt only (the negative prompt comes from the usual layer); A1111, and
difflab, take both from layer N. The references below therefore encode the negative prompt with diffusers'
``encode_prompt(..., clip_skip)`` as well, the way A1111 treats it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.prompt_weighting import encode_sd, encode_sdxl
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request

from .family_fixtures import build_sdxl, clip_text_encoder

CACHE = PipelineCache()
PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def sd_folder(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD pipeline with a three-layer CLIP text encoder (its own has one layer: nothing to skip)."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
    torch.manual_seed(3)
    pipe.text_encoder = clip_text_encoder(pipe.tokenizer, layers=3)
    folder = tmp_path_factory.mktemp("clip-skip-sd") / "pipeline"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip-skip-sdxl")
    pipe = build_sdxl(root)
    pipe.text_encoder = clip_text_encoder(pipe.tokenizer, layers=3)
    pipe.text_encoder_2 = clip_text_encoder(pipe.tokenizer, layers=3, projection=True)
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    return root / "pipeline"


def pipe_of(folder: Path):
    return CACHE.get(resolve_model(str(folder)))[0]


def diffusers_reference(pipe):
    """``pipe`` with its SD text encoder reachable as diffusers 0.42 looks for it: its SD ``encode_prompt`` reads
    ``text_encoder.text_model.final_layer_norm`` for a clip skip, and transformers 5 keeps that layer norm on the
    model itself. The alias (not a registered submodule) lets diffusers' own code run as the reference."""
    object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    return pipe


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_weighted_encoding_equals_diffusers_clip_skip(sd_folder: Path, sdxl_folder: Path, clip_skip: int) -> None:
    sd = diffusers_reference(pipe_of(sd_folder))
    with torch.no_grad():
        ours = encode_sd(sd, PROMPT, "", clip_skip=clip_skip)["prompt_embeds"]
        theirs, _ = sd.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=clip_skip - 1)
        plain, _ = sd.encode_prompt(PROMPT, "cpu", 1, False)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # a skip changes the encoding
    if clip_skip == 2:  # SDXL already uses the penultimate layer: with three layers one more can be skipped
        xl = pipe_of(sdxl_folder)
        with torch.no_grad():
            ours_xl = encode_sdxl(xl, PROMPT, "a blur", clip_skip=2)
            embeds, _, pooled, _ = xl.encode_prompt(PROMPT, device="cpu", clip_skip=1)
            negative, _, negative_pooled, _ = xl.encode_prompt("a blur", device="cpu", clip_skip=1)
        torch.testing.assert_close(ours_xl["prompt_embeds"], embeds, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours_xl["pooled_prompt_embeds"], pooled, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours_xl["negative_prompt_embeds"], negative, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours_xl["negative_pooled_prompt_embeds"], negative_pooled, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_generation_equals_diffusers_with_clip_skip(sd_folder: Path, sdxl_folder: Path, family: str) -> None:
    folder = sd_folder if family == "sd" else sdxl_folder
    size = 32 if family == "sd" else 16
    request = build_request(prompt=PROMPT, negative_prompt="a blur", model=str(folder), steps=3, guidance=5.0,
                            seed=7, width=size, height=size, clip_skip=2)
    ours = np.asarray(run(request, CACHE).images[0], dtype=np.int16)
    pipe = pipe_of(folder) if family == "sdxl" else diffusers_reference(pipe_of(folder))
    with torch.no_grad():
        prompt, negative = (pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False, clip_skip=1)
                            for text in (PROMPT, "a blur"))
        embeds = {"prompt_embeds": prompt[0], "negative_prompt_embeds": negative[0]}
        if family == "sdxl":
            embeds.update(pooled_prompt_embeds=prompt[2], negative_pooled_prompt_embeds=negative[2])
        theirs = pipe(**embeds, num_inference_steps=3, guidance_scale=5.0, width=size, height=size,
                      generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
    unskipped = np.asarray(run(request.model_copy(update={"clip_skip": None}), CACHE).images[0], dtype=np.int16)
    assert np.abs(ours - unskipped).max() > 2


def test_infotext_replay_and_refusals(sd_folder: Path, tiny_sd_folder: Path, tmp_path: Path) -> None:
    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result
    from difflab.engine.replay import plan_replay

    request = build_request(prompt=PROMPT, model=str(sd_folder), steps=2, width=32, height=32, clip_skip=3)
    path = save_result(run(request, CACHE), tmp_path)[0]
    parameters, record = read_png_metadata(path)
    assert "Clip skip: 3" in parameters and record["request"]["clip_skip"] == 3
    assert plan_replay(path).request.clip_skip == 3
    with pytest.raises(ValueError, match=r"clip_skip: this model's text encoder has 3 layers, so clip skip can "
                                         r"be 1 to 3; got 4"):
        run(request.model_copy(update={"clip_skip": 4}), CACHE)
    with pytest.raises(ValueError, match="clip_skip"):
        build_request(prompt=PROMPT, clip_skip=0)
