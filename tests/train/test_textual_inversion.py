"""``difflab train embedding``: textual inversion on the tiny random SD pipeline. The loss falls on a fixed batch,
only the new token's vectors change, a resumed run equals the uninterrupted one, and plain diffusers'
``load_textual_inversion`` loads both written files and draws what difflab draws with ``--embedding``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from difflab.cli import app
from difflab.train.textual_inversion import (
    DIFFUSERS_NAME, _Embedded, denoising_loss, initial_vectors, load_base, train_embedding,
)
from difflab.train.textual_inversion_config import TextualInversionConfig
from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the session fixture)

TOKEN = "<hexa>"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflab.data.captioned_folder import write_shape_set

    folder = tmp_path_factory.mktemp("ti-data")
    write_shape_set(folder, "hexagon", n=4, seed=0, resolution=32, trigger=TOKEN)
    return folder


def recipe(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path, **overrides) -> TextualInversionConfig:
    fields = dict(data=str(shapes), token=TOKEN, init_word="circle", base=str(tiny_sd_folder), vectors=2, steps=4,
                  learning_rate=5e-2, batch_size=2, checkpoint_every=2, resolution=32, seed=1)
    return TextualInversionConfig(**{**fields, **overrides})


def test_loss_falls_on_a_fixed_batch_and_only_the_new_vectors_move(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path) -> None:
    from diffusers import DDPMScheduler

    from difflab.data.captioned_folder import load_captioned_folder
    from difflab.train.loop import encode_posteriors
    from difflab.train.textual_inversion import captions_with_token

    config = recipe(tiny_sd_folder, shapes)
    pipe, _ = load_base(config, "cpu")
    frozen = {name: p.detach().clone() for name, p in pipe.text_encoder.named_parameters()}
    start = initial_vectors(pipe, config)
    shape_id = pipe.tokenizer("circle", add_special_tokens=False)["input_ids"][0]
    assert torch.equal(start, pipe.text_encoder.get_input_embeddings().weight[[shape_id, shape_id]])
    data = load_captioned_folder(config.data, 32, TOKEN)
    captions = captions_with_token(data.captions, TOKEN)
    mean, std = encode_posteriors(pipe.vae, data.pixels, "cpu", chunk=4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    embedded = _Embedded(pipe, config, start)
    optimizer = torch.optim.AdamW([embedded.vectors], lr=5e-2, weight_decay=0.0)

    def loss() -> torch.Tensor:  # the same images, timesteps and noise every time
        return denoising_loss(pipe, embedded, scheduler, mean, std, captions, 4, torch.Generator().manual_seed(7))

    first = loss().item()
    for _ in range(8):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.97 * first
    assert (embedded.vectors.detach() - start).abs().max() > 1e-3
    for name, value in pipe.text_encoder.named_parameters():
        if name.endswith("table"):
            continue
        assert torch.equal(value, frozen[name.replace(".base.", ".")]), name  # the vocabulary did not move


def test_trained_files_load_in_diffusers_and_draw_as_difflab(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path,
                                                             tmp_path: Path) -> None:
    import diffusers

    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    config = recipe(tiny_sd_folder, shapes)
    events = list(train_embedding(config, tmp_path / "run", device="cpu"))
    assert [event.step for event in events] == [1, 2, 3, 4] and events[1].checkpoint is not None
    learned = load_file(str(tmp_path / "run" / DIFFUSERS_NAME))
    a1111 = load_file(str(tmp_path / "run" / f"{TOKEN}.safetensors"))
    assert set(learned) == {TOKEN} and set(a1111) == {"emb_params"} and learned[TOKEN].shape == (2, 16)
    assert torch.equal(learned[TOKEN], a1111["emb_params"])
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["config"]["vectors"] == 2 and record["step"] == 4

    prompt, fields = f"a red {TOKEN} on the left", dict(steps=3, guidance=4.0, seed=3, width=32, height=32)
    cache = PipelineCache()
    ours = np.asarray(run(build_request(prompt=prompt, model=str(tiny_sd_folder),
                                        embeddings=[str(tmp_path / "run" / DIFFUSERS_NAME)], **fields),
                          cache).images[0], dtype=np.int16)
    for file, token in ((tmp_path / "run", None), (tmp_path / "run" / f"{TOKEN}.safetensors", TOKEN)):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_textual_inversion(str(file), token=token)  # the folder: learned_embeds.safetensors by default
        theirs = pipe(prompt, num_inference_steps=3, guidance_scale=4.0, width=32, height=32,
                      generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
        assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1


def test_resume_equals_the_uninterrupted_run(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path, tmp_path: Path) -> None:
    whole = list(train_embedding(recipe(tiny_sd_folder, shapes), tmp_path / "whole", device="cpu"))
    list(train_embedding(recipe(tiny_sd_folder, shapes, steps=2), tmp_path / "parts", device="cpu"))
    with pytest.raises(ValueError, match="steps|holds an embedding"):  # the recipe's steps are not a resume field
        list(train_embedding(recipe(tiny_sd_folder, shapes), tmp_path / "parts", device="cpu"))
    resumed = list(train_embedding(recipe(tiny_sd_folder, shapes), tmp_path / "parts", resume=True, device="cpu"))
    assert [event.step for event in resumed] == [3, 4]
    assert resumed[-1].loss == pytest.approx(whole[-1].loss, abs=1e-6)
    assert torch.equal(load_file(str(tmp_path / "whole" / DIFFUSERS_NAME))[TOKEN],
                       load_file(str(tmp_path / "parts" / DIFFUSERS_NAME))[TOKEN])


@pytest.mark.parametrize("arguments,message", [
    (["--token", "red"], "token: 'red' is already a word"),
    (["--init-word", "zzzz"], "init_word: 'zzzz' is not made of the tokenizer's known tokens"),
    (["--vectors", "0"], "vectors: must be 1 to 16"),
    (["--token", "two words"], "token: must be one word"),
    (["--out-is-file"], "--out"),
    (["--out-has-run"], "--out"),
])
def test_cli_bad_input_exits_2_naming_the_option(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path, tmp_path: Path, arguments,
                                                 message: str) -> None:
    out = tmp_path / "out"
    if arguments == ["--out-is-file"]:
        out.write_text("not a folder")
        arguments = []
    elif arguments == ["--out-has-run"]:
        out.mkdir()
        (out / DIFFUSERS_NAME).write_bytes(b"x")
        arguments = ["--base", str(tmp_path / "not-loaded")]  # refused before the base model is even looked up
    options = {"--token": TOKEN, "--init-word": "circle", "--base": str(tiny_sd_folder), "--vectors": "1"}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        options[flag] = value
    command = ["train", "embedding", "--data", str(shapes), "--out", str(out), "--steps", "1", "--resolution", "32",
               *[part for pair in options.items() for part in pair]]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in result.output.strip().splitlines()[-1], result.output
    assert not (out.is_dir() and any(path.suffix == ".safetensors" and path.stat().st_size > 1
                                     for path in out.iterdir()))


def test_cli_trains_and_prints_both_files(tiny_sd_folder: Path,  # noqa: F811
     shapes: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "embedding", "--data", str(shapes), "--token", TOKEN, "--init-word",
                                      "circle", "--out", str(tmp_path / "run"), "--base", str(tiny_sd_folder),
                                      "--steps", "2", "--batch-size", "2", "--resolution", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-2:] == [str(tmp_path / "run" / DIFFUSERS_NAME),
                                                       str(tmp_path / "run" / f"{TOKEN}.safetensors")]
