"""LoRA training on a tiny random SD pipeline: files that plain diffusers loads, kohya export, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the session fixture)

STEPS = 4


def _config(base: Path, data: Path, **overrides):
    from difflab.train.lora_config import LoraTrainConfig

    fields = dict(base=str(base), data=str(data), trigger="hexagon", rank=2, alpha=4.0, steps=STEPS, batch_size=2,
                  warmup_steps=1, checkpoint_every=2, learning_rate=5e-2, seed=3)
    fields.update(overrides)
    return LoraTrainConfig(**fields)


@pytest.fixture(scope="module")
def hexagons(tmp_path_factory) -> Path:
    from difflab.data.captioned_folder import write_shape_set

    folder = tmp_path_factory.mktemp("hexagons")
    write_shape_set(folder, "hexagon", n=4, seed=0)
    return folder


def _train(config, out: Path, resume: bool = False) -> list:
    from difflab.train.lora import train_lora

    return list(train_lora(config, out, resume=resume, device="cpu"))


@pytest.fixture(scope="module")
def trained(tiny_sd_folder, hexagons, tmp_path_factory):  # noqa: F811
    """(config, out folder, images drawn by the training process's own pipeline right after training)."""
    from difflab.train.lora import load_base, train_lora

    config = _config(tiny_sd_folder, hexagons, text_encoder_lora=True)
    out = tmp_path_factory.mktemp("lora")
    events = list(train_lora(config, out, device="cpu"))
    return config, out, events


def _draw(pipe, prompt="a red hexagon", seed=0):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=3, generator=[torch.Generator().manual_seed(seed)],
                    output_type="np").images[0]


def test_dataset_folder_has_captions_with_the_shape(hexagons):
    from difflab.data.captioned_folder import load_captioned_folder

    data = load_captioned_folder(hexagons, 64)
    assert data.pixels.shape == (4, 3, 64, 64)
    assert all("hexagon" in caption for caption in data.captions)


def test_training_writes_the_files_and_the_loss_moves(trained):
    config, out, events = trained
    assert [e.step for e in events] == list(range(1, STEPS + 1))
    assert all(np.isfinite(e.loss) for e in events)
    for name in ("pytorch_lora_weights.safetensors", "training.json", "training_state.safetensors", "loss.csv",
                 "loss.png", f"kohya/{out.name}.safetensors"):
        assert (out / name).is_file(), name
    record = json.loads((out / "training.json").read_text())
    assert record["steps_done"] == STEPS and record["config"]["rank"] == 2 and record["trigger"] == "hexagon"
    assert len((out / "loss.csv").read_text().splitlines()) == STEPS + 1


def test_plain_diffusers_reload_equals_the_trained_weights(trained, tiny_sd_folder):  # noqa: F811
    """Reference: peft's own forward with the trained adapters in memory (restored from the training state);
    checked: a fresh diffusers pipeline + load_lora_weights(out) draws the same image (alpha = 2 * rank checks
    that the scale alpha / r survives the file)."""
    from diffusers import StableDiffusionPipeline

    from tests.train.lora_reference import assert_plain_diffusers_draws_it, restore_trained

    config, out, _ = trained
    in_memory, _ = restore_trained(config, out)
    expected = _draw(in_memory)

    assert_plain_diffusers_draws_it(StableDiffusionPipeline, tiny_sd_folder, out, expected, _draw)


def test_kohya_export_names_alpha_and_metadata(trained):
    config, out, _ = trained
    with safe_open(str(out / "kohya" / f"{out.name}.safetensors"), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        alpha = handle.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha")
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert float(alpha) == 4.0
    assert metadata["ss_network_dim"] == "2" and metadata["ss_network_alpha"] == "4"
    assert metadata["ss_sd_model_name"] == config.base and metadata["ss_base_model_version"] == "sd_v1"


def test_kohya_export_round_trips_through_diffusers(trained, tiny_sd_folder):  # noqa: F811
    """kohya file -> diffusers' own kohya converter -> same images as the diffusers-format file."""
    from diffusers import StableDiffusionPipeline

    _, out, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder))
    pipe.load_lora_weights(str(out))
    from_diffusers = _draw(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(out / "kohya"), weight_name=f"{out.name}.safetensors")
    np.testing.assert_allclose(_draw(pipe), from_diffusers, atol=1e-6)


def test_resume_continues_exactly(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    """Stop after 2 of 4 steps, resume in a new process state: the same losses and LoRA weights as one run."""
    from safetensors.torch import load_file

    whole = _train(_config(tiny_sd_folder, hexagons), tmp_path / "whole")
    first = _train(_config(tiny_sd_folder, hexagons, steps=2), tmp_path / "split")
    second = _train(_config(tiny_sd_folder, hexagons), tmp_path / "split", resume=True)
    assert [e.step for e in second] == [3, 4]
    assert [e.loss for e in first + second] == pytest.approx([e.loss for e in whole], rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("network", ["transformer", "locon"])
def test_wider_networks_load_whole_in_diffusers_from_both_files(network, tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    """Reference: peft's forward with the trained adapters in memory. Checked: load_lora_weights of the
    diffusers file and of the kohya export inject every layer (3x3 convs included for locon) and draw the same."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from difflab.train.lora import train_lora
    from difflab.train.lora_config import UNET_NETWORKS
    from tests.train.lora_reference import restore_trained

    config = _config(tiny_sd_folder, hexagons, network=network)
    out = tmp_path / "lora"
    events = list(train_lora(config, out, device="cpu"))
    assert events[-1].checkpoint == out
    trained_pipe, _ = restore_trained(config, out)  # a fresh base whose adapters take the trained weights
    expected = _draw(trained_pipe)
    adapted = {n for n, m in trained_pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)}
    if network == "locon":
        assert any(n.endswith("resnets.0.conv1") for n in adapted) and any(n.endswith(".conv") for n in adapted)
    assert len(adapted) > sum(1 for n in adapted if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")) * 4 / 3

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder))
    base = _draw(pipe)
    for folder, name in ((out, "pytorch_lora_weights.safetensors"), (out / "kohya", f"{out.name}.safetensors")):
        pipe.load_lora_weights(str(folder), weight_name=name)
        injected = {n for n, m in pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)}
        assert injected == adapted, (name, sorted(adapted - injected)[:3])
        image = _draw(pipe)
        assert np.abs(image - base).max() > 1e-3, "the LoRA changes nothing: the test could not fail"
        np.testing.assert_allclose(image, expected, atol=1e-5)
        pipe.unload_lora_weights()
    assert set(UNET_NETWORKS["attention"]) < set(UNET_NETWORKS[network])


def test_prior_preservation_adds_the_reg_batch_and_weight_zero_is_the_plain_run(tiny_sd_folder, hexagons,  # noqa: F811
                                                                                 tmp_path):
    from safetensors.torch import load_file

    from difflab.data.captioned_folder import write_shape_set
    from difflab.train.prior import write_prior_images

    prompts = ["a red circle on the left, blue background", "a green square at the top, white background"]
    reg = tmp_path / "reg"
    written = write_prior_images(str(tiny_sd_folder), prompts, reg, steps=2)
    assert [p.name for p in written] == ["0000.png", "0001.png"]
    assert (reg / "0001.txt").read_text().strip() == prompts[1]
    before = (reg / "0000.png").stat().st_mtime_ns
    write_prior_images(str(tiny_sd_folder), prompts, reg, steps=2)  # already there: kept
    assert (reg / "0000.png").stat().st_mtime_ns == before

    plain = _train(_config(tiny_sd_folder, hexagons), tmp_path / "plain")
    zero = _train(_config(tiny_sd_folder, hexagons, reg_data=str(reg), prior_loss_weight=0.0), tmp_path / "zero")
    prior = _train(_config(tiny_sd_folder, hexagons, reg_data=str(reg)), tmp_path / "prior")
    assert [e.loss for e in zero] == pytest.approx([e.loss for e in plain], rel=1e-6)
    a, b = (load_file(str(tmp_path / run / "pytorch_lora_weights.safetensors")) for run in ("plain", "zero"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    assert prior[0].loss > plain[0].loss  # the same data batch plus the reg batch's (positive) loss
    other = tmp_path / "other"
    write_shape_set(other, "circle", n=2, seed=1)
    with pytest.raises(ValueError, match="reg_data differs"):
        _train(_config(tiny_sd_folder, hexagons, reg_data=str(other)), tmp_path / "prior", resume=True)


def test_masked_loss_weights_the_subject_with_mask_files_or_auto(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    import shutil

    from PIL import Image

    from difflab.data.captioned_folder import MASKS_DIR, load_captioned_folder, load_masks

    # the set's mask files are the shape: what "auto" computes from the border colour, and not empty
    data = load_captioned_folder(hexagons, 64)
    masks = load_masks(data.paths, hexagons / MASKS_DIR, 64)
    assert masks.shape == (4, 1, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert 0.005 < masks.mean() < 0.5
    plain = _train(_config(tiny_sd_folder, hexagons), tmp_path / "plain")
    files = _train(_config(tiny_sd_folder, hexagons, foreground_weight=4.0, masks=str(hexagons / MASKS_DIR)),
                   tmp_path / "files")
    auto = _train(_config(tiny_sd_folder, hexagons, foreground_weight=4.0, masks="auto"), tmp_path / "auto")
    assert [e.loss for e in files] == pytest.approx([e.loss for e in auto], rel=1e-6)
    assert files[0].loss != pytest.approx(plain[0].loss, rel=1e-4)  # same draws, other weights
    # a mask missing for one image is named; so is a mask folder that is not there
    partial = tmp_path / "partial"
    shutil.copytree(hexagons / MASKS_DIR, partial)
    (partial / "0002.png").unlink()
    Image.new("L", (64, 64), 255).save(partial / "0003.png")  # any size and content is a mask
    with pytest.raises(ValueError, match="no mask for image '0002.png'"):
        _train(_config(tiny_sd_folder, hexagons, foreground_weight=1.0, masks=str(partial)), tmp_path / "partial-run")
    with pytest.raises(ValueError, match="masks folder"):
        load_masks(data.paths, tmp_path / "none", 64)


def test_weighted_mse_against_a_hand_computation():
    from difflab.train.masked_loss import latent_weight, weighted_mse

    prediction, target = torch.zeros(1, 2, 2, 2), torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]]])
    assert weighted_mse(prediction, target, None).item() == pytest.approx((1 + 4 + 9) / 8)
    assert weighted_mse(prediction, target, torch.ones(1, 1, 2, 2)).item() == pytest.approx((1 + 4 + 9) / 8)
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 1] = 1.0  # one pixel in the top-left latent cell of a 2x2 grid
    weight = latent_weight(mask, (2, 2), 3.0)
    assert weight[0, 0].tolist() == [[4.0, 1.0], [1.0, 1.0]]
    assert weighted_mse(prediction, target, weight).item() == pytest.approx((4 * 1 + 1 * 4 + 1 * 9) / (7 * 2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_paper_from_the_betas(prediction_type):
    from diffusers import DDPMScheduler

    from difflab.train.masked_loss import min_snr_weight

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    t = torch.tensor([0, 10, 100, 400, 999])
    # SNR(t) = alpha_bar / (1 - alpha_bar), alpha_bar the running product of 1 - beta, betas in float64 from the
    # formula of the scaled-linear schedule (Hang et al. 2023, eq. 10; v: divided by SNR + 1 instead of SNR)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.clamp(snr, max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    got = min_snr_weight(scheduler, t, 5.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=0)
    assert got[0] < 0.01 and (got[-1] == 1.0 if prediction_type == "epsilon" else got[-1] < 1.0)


def test_weighted_mse_scales_each_sample_without_changing_the_normaliser():
    from difflab.train.masked_loss import weighted_mse

    prediction, target = torch.zeros(2, 1, 1, 2), torch.tensor([[[[1.0, 1.0]]], [[[2.0, 2.0]]]])
    assert weighted_mse(prediction, target, None, torch.tensor([1.0, 0.5])).item() == pytest.approx((2 + 0.5 * 8) / 4)
    weight = torch.tensor([[[[3.0, 1.0]]], [[[1.0, 1.0]]]])
    assert weighted_mse(prediction, target, weight, torch.tensor([0.0, 1.0])).item() == pytest.approx(8 / 6)


def test_min_snr_training_reweights_the_same_draws(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    plain = _train(_config(tiny_sd_folder, hexagons, steps=4, batch_size=8), tmp_path / "plain")
    snr = _train(_config(tiny_sd_folder, hexagons, steps=4, batch_size=8, min_snr_gamma=5.0), tmp_path / "snr")
    # Same draws in both runs: while every timestep drawn is noisy (SNR < gamma, weight 1) the runs are identical;
    # at the first step that draws a low-noise timestep its weight < 1 makes the loss smaller, and they part.
    first = next(k for k, (a, b) in enumerate(zip(snr, plain)) if a.loss != pytest.approx(b.loss, rel=1e-6))
    assert snr[first].loss < plain[first].loss
    assert all(a.loss == pytest.approx(b.loss, rel=1e-6) for a, b in zip(snr[:first], plain[:first]))


def test_the_lr_schedule_is_diffusers_linear_and_kohya_metadata_names_it(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    from diffusers.optimization import get_scheduler

    from tests.core.test_lr_schedule import scheduler_rates

    events = _train(_config(tiny_sd_folder, hexagons, lr_scheduler="linear", warmup_steps=1), tmp_path / "linear")
    expected = scheduler_rates(lambda opt: get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=STEPS),
                               steps=STEPS, peak=5e-2)
    assert [e.learning_rate for e in events] == pytest.approx(expected)  # 0, peak, 2/3, 1/3 of it
    with safe_open(str(tmp_path / "linear" / "kohya" / "linear.safetensors"), "pt") as handle:
        assert handle.metadata()["ss_lr_scheduler"] == "linear"


def test_an_existing_run_needs_resume_and_the_same_settings(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    _train(_config(tiny_sd_folder, hexagons, steps=2), tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        _train(_config(tiny_sd_folder, hexagons, steps=2), tmp_path)
    with pytest.raises(ValueError, match="rank differs"):
        _train(_config(tiny_sd_folder, hexagons, rank=3), tmp_path, resume=True)


@pytest.mark.parametrize("field, value, message", [
    ("trigger", "two words", "trigger must be one word"),
    ("rank", 0, "rank must be"),
    ("learning_rate", -1.0, "learning_rate must be"),
    ("mixed_precision", "fp8", "mixed_precision must be one of"),
    ("caption_template", "no placeholder", "caption_template must contain"),
    ("network", "everything", "network must be one of"),
    ("prior_loss_weight", -1.0, "prior_loss_weight must be"),
    ("foreground_weight", -1.0, "foreground_weight must be in"),
    ("foreground_weight", 2.0, "a weight > 0 needs masks"),
    ("masks", "auto", "masks need a weight > 0"),
    ("min_snr_gamma", 0.0, "min_snr_gamma must be in"),
    ("lr_scheduler", "cosine_with_restarts", "lr_scheduler must be one of"),
])
def test_bad_settings_name_the_field(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, tmp_path, **{field: value})


def test_cli_trains_and_refuses_a_missing_data_folder(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from difflab.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["train", "lora", "--base", str(tiny_sd_folder), "--data", str(tmp_path / "nope"),
                                  "--trigger", "hexagon", "-o", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "--data" in missing.output
    no_masks = runner.invoke(app, ["train", "lora", "--base", str(tiny_sd_folder), "--data", str(hexagons),
                                   "--trigger", "hexagon", "-o", str(tmp_path / "out"), "--foreground-weight", "2",
                                   "--masks", str(tmp_path / "nope")])
    assert no_masks.exit_code == 2 and "--masks" in no_masks.output, no_masks.output
    assert not (tmp_path / "out").exists()
    ok = runner.invoke(app, ["train", "lora", "--base", str(tiny_sd_folder), "--data", str(hexagons), "--trigger",
                             "hexagon", "-o", str(tmp_path / "out"), "--steps", "2", "--rank", "2", "--batch-size",
                             "2", "--validate-every", "2", "--validation-prompt", "a red hexagon",
                             "--min-snr-gamma", "5", "--lr-scheduler", "constant"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "validation" / "step-000002.png").is_file()
    recorded = json.loads((tmp_path / "out" / "training.json").read_text())["config"]
    assert recorded["min_snr_gamma"] == 5.0 and recorded["lr_scheduler"] == "constant"
    bad = runner.invoke(app, ["train", "lora", "--base", str(tiny_sd_folder), "--data", str(hexagons), "--trigger",
                              "hexagon", "-o", str(tmp_path / "bad"), "--lr-scheduler", "sometimes"])
    assert bad.exit_code == 2 and "lr_scheduler must be one of" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()


def test_make_dataset_command(tmp_path):
    from typer.testing import CliRunner

    from difflab.cli import app

    result = CliRunner().invoke(app, ["lora", "make-dataset", "-o", str(tmp_path), "-n", "3", "--trigger", "sks"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.png", "0000.txt", "0001.png", "0001.txt",
                                                          "0002.png", "0002.txt", "masks"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert (tmp_path / "0000.txt").read_text().startswith("sks, ")
