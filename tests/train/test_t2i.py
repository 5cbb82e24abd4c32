"""The text-to-image trainer on a tiny recipe: runs, resumes exactly, saves a plain diffusers pipeline."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from difflab.train.t2i_config import T2IConfig, load_config

TINY = {
    "data": {"dataset_size": 1000},
    "vae": {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "mid_block_attention": False},
    "text_encoder": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "max_position_embeddings": 16},
    "unet": {"block_out_channels": [16, 16, 16], "cross_attention": [True, False, False], "norm_num_groups": 8,
             "attention_head_dim": 2},
    "vae_training": {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "scaling_batches": 1},
    "unet_training": {"steps": 4, "batch_size": 2, "checkpoint_every": 2},
    "eval": {"num_prompts": 0},
}


@pytest.fixture(scope="module")
def tiny() -> T2IConfig:
    return T2IConfig.from_dict(TINY)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> tuple[Path, list]:
    from difflab.train.t2i import train_t2i

    out = tmp_path_factory.mktemp("t2i")
    return out, list(train_t2i(tiny, out))


def test_both_phases_run_and_write_their_files(trained, tiny):
    out, events = trained
    assert [(e.phase, e.step) for e in events] == [("vae", 1), ("vae", 2)] + [("unet", k) for k in range(1, 5)]
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in events)
    assert [e.step for e in events if e.phase == "unet" and e.checkpoint] == [2, 4]
    for name in ("config.json", "vae/loss.csv", "vae/loss.png", "unet/loss.csv", "unet/loss.png",
                 "vae/training_state.safetensors", "unet/training_state.safetensors", "pipeline/model_index.json"):
        assert (out / name).is_file(), name
    assert (out / "unet" / "loss.csv").read_text().count("\n") == 1 + tiny.unet_training.steps


def test_saved_folder_is_a_plain_stable_diffusion_pipeline(trained):
    import json

    from diffusers import StableDiffusionPipeline

    out, _ = trained
    folder = out / "pipeline"
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert index["scheduler"][1] == "DPMSolverMultistepScheduler"
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    scaling = pipe.vae.config.scaling_factor
    assert scaling > 0 and scaling != 0.18215  # measured, not SD's default
    image = pipe("a red circle on the left, blue background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_resume_continues_with_identical_losses(trained, tiny, tmp_path):
    from difflab.train.t2i import train_unet

    out, events = trained
    uninterrupted = [e.loss for e in events if e.phase == "unet"]
    shutil.copytree(out / "vae", tmp_path / "vae")
    shutil.copytree(out / "tokenizer", tmp_path / "tokenizer")
    first = []
    for event in train_unet(tiny, tmp_path):
        first.append(event.loss)
        if event.step == 2:  # checkpoint at 2, then "interrupted"
            break
    resumed = [e.loss for e in train_unet(tiny, tmp_path, resume=True)]
    assert first + resumed == uninterrupted
    with pytest.raises(ValueError, match="resume"):
        next(train_unet(tiny, tmp_path))  # refuses to overwrite a run without resume


def test_caption_labels_follow_the_prompt_parser() -> None:
    from difflab.train.t2i import CAPTION_FIELDS, caption_labels

    labels = caption_labels(["a small red circle on the left, blue background", "star", ""])
    index = {name: {value: i + 1 for i, value in enumerate(values)} for name, values in CAPTION_FIELDS.items()}
    assert labels["shape"].tolist() == [index["shape"]["circle"], index["shape"]["star"], 0]
    assert labels["color"].tolist() == [index["color"]["red"], 0, 0]
    assert labels["background"].tolist() == [index["background"]["blue"], 0, 0]
    assert labels["position"].tolist() == [index["position"]["left"], 0, 0]
    assert labels["size"].tolist() == [index["size"]["small"], 0, 0]


def test_text_phase_teaches_reading_and_a_frozen_encoder_ships_unchanged(tiny, tmp_path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from difflab.train.t2i import train_t2i

    config = T2IConfig.from_dict({**TINY, "text_training": {"steps": 60, "batch_size": 32, "warmup_steps": 5,
                                                            "checkpoint_every": 20, "learning_rate": 1e-2},
                                  "unet_training": {**TINY["unet_training"], "text_encoder_learning_rate": 0.0}})
    events = list(train_t2i(config, tmp_path))
    assert [e.phase for e in events] == ["vae"] * 2 + ["text"] * 60 + ["unet"] * 4
    rows = (tmp_path / "text" / "loss.csv").read_text().splitlines()
    first, last = (float(rows[i].split(",")[1]) for i in (1, -1))
    assert last < 0.6 * first  # the heads learn to read the captions back
    trained = CLIPTextModel.from_pretrained(str(tmp_path / "text" / "model")).state_dict()
    shipped = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipeline")).text_encoder.state_dict()
    assert trained.keys() == shipped.keys() and all(torch.equal(trained[k], shipped[k]) for k in trained)
    with pytest.raises(ValueError, match="no text phase"):
        next(train_t2i(tiny, tmp_path / "other", phase="text"))


def test_decoder_phase_sharpens_reconstructions_and_leaves_the_latent_space_alone(trained, tiny, tmp_path):
    from diffusers import AutoencoderKL

    from difflab.data.shapes import ShapesDataset
    from difflab.train.t2i import draw_batch, train_decoder, train_t2i, weighted_reconstruction_loss

    out, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    config = dataclasses.replace(tiny, decoder_training=dataclasses.replace(
        tiny.decoder_training, steps=40, batch_size=8, learning_rate=3e-3, warmup_steps=0, checkpoint_every=20))
    events = list(train_t2i(config, run, phase="decoder"))
    assert [(e.phase, e.step) for e in events] == [("decoder", k) for k in range(1, 41)]

    before = AutoencoderKL.from_pretrained(str(run / "vae" / "model")).eval()
    after = AutoencoderKL.from_pretrained(str(run / "decoder" / "model")).eval()
    shipped = AutoencoderKL.from_pretrained(str(run / "pipeline" / "vae")).eval()
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    for part in ("encoder", "quant_conv"):  # the U-Net's latent space is untouched
        assert same(getattr(before, part).state_dict(), getattr(after, part).state_dict()), part
    assert after.config.scaling_factor == before.config.scaling_factor
    assert not same(before.decoder.state_dict(), after.decoder.state_dict())
    assert same(after.state_dict(), shipped.state_dict())  # the pipeline now decodes with it

    # held-out images (another seed's dataset): the new decoder reconstructs them better from the same latents
    x, _ = draw_batch(ShapesDataset(1000, 99, tiny.data.shapes, 64), 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = before.encode(x).latent_dist.mode()
        losses = [weighted_reconstruction_loss(tiny.vae_training, vae.decode(z).sample, x).item()
                  for vae in (before, after)]
    assert losses[1] < 0.9 * losses[0], losses

    # interrupted at its checkpoint and resumed, the phase goes on exactly as it would have
    again = tmp_path / "again"
    shutil.copytree(out, again)
    first = []
    for event in train_decoder(config, again):
        first.append(event.loss)
        if event.step == 20:
            break
    resumed = [e.loss for e in train_decoder(config, again, resume=True)]
    assert first + resumed == [e.loss for e in events]
    with pytest.raises(ValueError, match="no decoder phase"):
        next(train_t2i(tiny, tmp_path / "other", phase="decoder"))


def test_unet_phase_needs_a_trained_vae(tiny, tmp_path):
    from difflab.train.t2i import train_unet

    with pytest.raises(ValueError, match="vae phase first"):
        next(train_unet(tiny, tmp_path))


def test_evaluate_pipeline_returns_an_adherence_report(trained):
    from difflab.train.t2i import evaluate_pipeline, evaluation_prompts

    out, _ = trained
    prompts = evaluation_prompts(4)
    assert len({p.split()[3] for p in prompts}) == 4  # "a <size> <colour> <shape> ...": shapes cycle first
    report = evaluate_pipeline(out / "pipeline", prompts, seeds=0, guidance=2.0, steps=2)
    assert report.n_images == 4 and set(report.accuracy) >= {"shape", "color"}


@pytest.mark.parametrize(("table", "values", "field"), [
    ("unet_training", {"steps": 0}, "unet_training.steps"),
    ("unet_training", {"caption_dropout": 1.5}, "unet_training.caption_dropout"),
    ("noise", {"beta_schedule": "cosine"}, "noise.beta_schedule"),
    ("vae", {"block_out_channels": [16, 30]}, "vae.block_out_channels"),
    ("unet", {"cross_attention": [True]}, "unet.cross_attention"),
    ("vae", {"colour": 1}, "vae.colour"),
    ("vae_training", {"batch_size": "8"}, "vae_training.batch_size"),
    ("vae_training", {"foreground_weight": -1}, "vae_training.foreground_weight"),
])
def test_bad_config_values_name_the_field(table, values, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        T2IConfig.from_dict({table: values})


def test_committed_recipe_loads_and_bad_files_name_themselves(tmp_path):
    recipe = load_config(Path(__file__).parents[2] / "configs" / "tiny-shapes.toml")
    assert recipe.latent_size == 16 and recipe.vae.latent_channels == 4
    assert recipe.text_encoder.hidden_size >= 128 and recipe.unet_training.caption_dropout == 0.1
    assert dataclasses.replace(recipe).with_max_steps(3).unet_training.steps == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[unet_training]\nsteps = -1\n")
    with pytest.raises(ValueError, match="bad.toml.*unet_training.steps"):
        load_config(bad)


def test_foreground_mask_marks_the_shape_not_the_background():
    from difflab.data.shapes import ShapeSpec, render
    from difflab.data.foreground import foreground_mask

    image = render(ShapeSpec("square", "red", "blue", "centre", "large"))
    x = torch.tensor(list(image.getdata()), dtype=torch.float32).reshape(1, 64, 64, 3).permute(0, 3, 1, 2) / 127.5 - 1
    mask = foreground_mask(x)[0, 0]
    red = torch.tensor([215, 30, 35]) / 127.5 - 1  # the palette's red, as the data loader scales it
    exactly_red = ((x[0] - red[:, None, None]).abs().amax(dim=0) < 0.02)
    assert mask.shape == (64, 64) and not mask[0].any() and not mask[:, -1].any()  # the border is background
    assert mask[exactly_red].all()  # every pixel of the shape's own colour is foreground
    assert 0.8 * exactly_red.sum() <= mask.sum() <= 1.3 * exactly_red.sum()  # plus only its anti-aliased rim


def test_latent_weighted_mse_counts_the_shapes_latent_pixels_more():
    from difflab.train.t2i import latent_weighted_mse

    x = -torch.ones(1, 3, 64, 64)
    x[:, :, 17:23, 40:44] = 1.0  # a shape over pixel rows 17-22, columns 40-43: latent rows 4-5, column 10
    prediction, target = torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)
    target[:, :, 4, 10] = 2.0  # an error of 2 under the shape
    target[:, :, 0, 0] = 1.0  # and of 1 in the background
    assert latent_weighted_mse(prediction, target, x, 0.0).item() == pytest.approx((4 * 4 + 4 * 1) / (4 * 256))
    # weights: 1 + 3 on the 2 foreground latent pixels, 1 elsewhere -> sum of weights per channel 256 + 2 * 3
    expected = (4 * 4 * 4 + 4 * 1) / (4 * (256 + 2 * 3))
    assert latent_weighted_mse(prediction, target, x, 3.0).item() == pytest.approx(expected)
