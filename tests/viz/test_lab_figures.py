"""The lab figures: trajectory GIF, samplers x steps comparison, latent-space grid. Tiny models, seconds each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported for this folder)


@pytest.fixture(scope="module")
def digits_model(tiny_checkpoint: Path):
    from difflab.core.checkpoint import load_model

    return load_model(tiny_checkpoint)


def test_trajectory_gif_has_a_frame_per_step_showing_that_steps_estimate(digits_model, tmp_path: Path) -> None:
    from difflab.core.generate import SampleRequest, sample_steps
    from difflab.viz.animation import FINAL_HOLD_MS, FRAME_MS, trajectory_gif
    from difflab.viz.grid import to_pil
    from difflab.viz.trajectory import ROW_LABELS

    steps = list(sample_steps(digits_model, SampleRequest(labels=(1, 2, 3), sampler="euler", steps=5, seed=0)))
    path = trajectory_gif(steps, tmp_path / "t.gif", samples=3, scale=1)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.info["loop"] == 0 and gif.info["duration"] == FRAME_MS
        gif.seek(4)
        assert gif.info["duration"] == FINAL_HOLD_MS
        gif.seek(2)
        frame = np.asarray(gif.convert("L"))
    # layout of make_grid with scale 1, padding 2, a 14-px label strip and a row-label margin: sample 1's x0
    # estimate of step 3 sits at row 2, column 2 of the grid; the GIF must hold exactly those grey levels
    expected = np.asarray(to_pil(steps[2].denoised[1:2])[0])
    margin = 6 * max(len(label) for label in ROW_LABELS) + 4
    top, left = 14 + 2 + (8 + 2), margin + 2 + (8 + 2)
    assert np.array_equal(frame[top:top + 8, left:left + 8], expected)


def test_sampler_comparison_draws_the_same_seeds_in_every_cell(digits_model, tmp_path: Path) -> None:
    from difflab.eval.digits_metrics import evaluate_digit_samples
    from difflab.viz.samplers import compare_samplers, plot_sampler_comparison

    result = compare_samplers(digits_model, ["ddim", "euler", "heun"], [2, 4], per_class=1, seed=5)
    assert [(c.sampler, c.steps) for c in result.cells] == [(s, n) for s in ("ddim", "euler", "heun") for n in (2, 4)]
    # DDIM with eta 0 is Euler on the probability-flow ODE: from the same seeds, the same samples
    assert torch.allclose(result.cell("ddim", 4).images, result.cell("euler", 4).images, atol=1e-5)
    # Heun evaluates twice per step except the last (Euler to sigma 0): 2n - 1 network calls
    assert result.cell("heun", 4).model_calls == 7 and result.cell("euler", 4).model_calls == 4
    cell = result.cell("euler", 2)
    assert cell.scores == evaluate_digit_samples(cell.images, result.labels)
    assert "| *10 real digits* |" in result.table()
    path = plot_sampler_comparison(result, tmp_path / "grid.png")
    assert Image.open(path).size[0] > 300


def test_sampler_comparison_rejects_bad_input_before_sampling(digits_model) -> None:
    from difflab.viz.samplers import compare_samplers

    with pytest.raises(ValueError, match="sampler must be one of"):
        compare_samplers(digits_model, ["ddim", "nope"], [2])
    with pytest.raises(ValueError, match="steps must be between"):
        compare_samplers(digits_model, ["ddim"], [0])


def test_vae_round_trip_matches_diffusers_encode_and_decode(tiny_sd_folder: Path) -> None:  # noqa: F811
    from diffusers import AutoencoderKL

    from difflab.data.shapes import ShapeSpec, render
    from difflab.viz.latents import latent_grid, vae_round_trip

    vae = AutoencoderKL.from_pretrained(tiny_sd_folder / "vae")
    images = [render(ShapeSpec("circle", "red", "white", "centre", "large"), resolution=32)]
    trip = vae_round_trip(vae, images)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert trip.latents.shape == (1, vae.config.latent_channels, 32 // factor, 32 // factor)
    pixels = torch.from_numpy(np.asarray(images[0], dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        reference = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(trip.latents, reference, atol=1e-6)
    assert trip.pixel_values == 3 * 32 * 32 and trip.latent_values == reference[0].numel()
    grid = latent_grid(trip, scale=1)
    assert grid.size[0] == (vae.config.latent_channels + 2) * (32 + 2) + 2


def test_viz_commands_write_the_gif_and_the_sampler_grid(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from difflab.cli import app

    runner = CliRunner()
    for command in (["viz", "samplers", "--help"], ["explain", "--help"]):
        assert runner.invoke(app, command).exit_code == 0
    result = runner.invoke(app, ["viz", "trajectory", "-c", str(tiny_checkpoint), "--steps", "3", "--samples", "2",
                                 "-o", str(tmp_path / "t.png"), "--gif", str(tmp_path / "t.gif")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "t.gif").n_frames == 3
    result = runner.invoke(app, ["viz", "samplers", "-c", str(tiny_checkpoint), "--samplers", "euler", "--steps", "2",
                                 "--per-class", "1", "-o", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert "| euler | 2 | 2 |" in result.output and (tmp_path / "s.png").is_file()
    result = runner.invoke(app, ["viz", "samplers", "-c", str(tiny_checkpoint), "--steps", "2,x", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "steps must be" in result.output and not (tmp_path / "x.png").exists()
