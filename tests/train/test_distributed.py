"""Data-parallel LoRA and ControlNet training (train/distributed.py) on the tiny random SD pipeline.

Fast: the sharding arithmetic in one process (each "process"'s rows, their gradients averaged by hand, against the
whole batch's), and the bad-input contract. Slow (``-m slow``, also run by .ci/run): the real thing, ``accelerate
launch`` of ``python -m difflab train lora|controlnet`` in 2 CPU processes (gloo), against a single process with the
same global batch, and 2 + 2 resumed steps against 4.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the session fixture)

# Two processes against one: the same draws and the same maths, summed in another order (each process's half of
# the batch through the U-Net, then the all-reduce). Measured here after 4 steps at lr 5e-2 (LoRA weights up to
# ~1.3): 2 processes vs 1 differ by at most 1.3e-6 (plain LoRA), 7.6e-6 (masked loss), 2.4e-5 (masked loss +
# text-encoder LoRA); ControlNet state by 3.4e-7; losses by < 1e-6 relative. The floor: the single process with 2
# threads instead of 1 moves the masked + text-encoder LoRA by 4.9e-5 (AdamW divides the first, tiny gradients of
# the A matrices by their own size, which magnifies rounding). A process training on its half alone, without the
# average, moves them by more than 1e-2.
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-5


def _lora_config(base: Path, data: Path, **overrides):
    from difflab.train.lora_config import LoraTrainConfig

    fields = dict(base=str(base), data=str(data), trigger="hexagon", rank=2, alpha=4.0, steps=4, batch_size=4,
                  warmup_steps=1, checkpoint_every=2, learning_rate=5e-2, seed=3)
    return LoraTrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def hexagons(tmp_path_factory) -> Path:
    from difflab.data.captioned_folder import write_shape_set

    folder = tmp_path_factory.mktemp("hexagons")
    write_shape_set(folder, "hexagon", n=4, seed=0)
    return folder


# --- fast: the arithmetic of the shards, in one process --------------------------------------------------------


def test_python_m_difflab_is_the_command_launchers_start():
    """``accelerate launch -m difflab`` and ``torchrun -m difflab`` start the package as a module."""
    result = subprocess.run([sys.executable, "-m", "difflab", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lora" in result.stdout and "controlnet" in result.stdout



def test_rows_split_the_global_batch_in_order():
    from difflab.train.distributed import SINGLE, DataParallel

    assert SINGLE.rows(8) == slice(None)
    for world in (2, 4):
        taken = [i for rank in range(world) for i in range(8)[DataParallel(rank, world).rows(8)]]
        assert taken == list(range(8))


@pytest.mark.parametrize("overrides", [
    dict(foreground_weight=4.0, masks="auto", min_snr_gamma=5.0),  # the masked loss's shared normaliser
    dict(text_encoder_lora=True, reg="circles"),  # text encoded per shard; the prior batch sharded too
], ids=["masks-min-snr", "text-encoder-prior"])
def test_the_shards_mean_gradient_is_the_whole_batchs(overrides, tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    """Each of 2 processes' losses on its rows, backpropagated: their mean loss and mean gradient are the single
    process's on the whole batch (what the all-reduce of train/distributed.py then computes between processes)."""
    from diffusers import DDPMScheduler

    from difflab.core.train import step_generator
    from difflab.data.captioned_folder import write_shape_set
    from difflab.train.distributed import SINGLE, DataParallel
    from difflab.train.lora import _cache_data, _denoising_loss, _train_mode, load_base, trainable

    overrides = dict(overrides)
    if overrides.pop("reg", None):
        write_shape_set(tmp_path / "reg", "circle", n=3, seed=1)
        overrides["reg_data"] = str(tmp_path / "reg")
    config = _lora_config(tiny_sd_folder, hexagons, **overrides)
    pipe, _ = load_base(config, "cpu")
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    cache = _cache_data(pipe, config, 64, "cpu")
    prior = _cache_data(pipe, config, 64, "cpu", config.reg_data) if config.reg_data else None
    params = [p for named in trainable(pipe, config).values() for p in named.values()]
    with torch.no_grad():  # B = 0 at the start would make the U-Net LoRA's A gradients all zero
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    _train_mode(pipe, config)

    def loss_and_gradients(parallel):
        generator = step_generator(config.seed, 1)
        loss = _denoising_loss(pipe, scheduler, cache, config, generator, "cpu", parallel)
        if prior is not None:
            loss = loss + config.prior_loss_weight * _denoising_loss(pipe, scheduler, prior, config, generator,
                                                                     "cpu", parallel)
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), grads

    whole_loss, whole = loss_and_gradients(SINGLE)
    shards = [loss_and_gradients(DataParallel(rank, 2)) for rank in range(2)]
    assert torch.stack([loss for loss, _ in shards]).mean().item() == pytest.approx(whole_loss.item(), rel=1e-6)
    assert shards[0][0].item() != pytest.approx(shards[1][0].item(), rel=1e-3)  # the halves differ: a real split
    for index, expected in enumerate(whole):
        averaged = (shards[0][1][index] + shards[1][1][index]) / 2
        torch.testing.assert_close(averaged, expected, rtol=1e-4, atol=1e-7)
    assert max(g.abs().max().item() for g in whole) > 1e-3  # gradients that could differ


@pytest.mark.parametrize("command", ["lora", "controlnet"])
def test_an_uneven_batch_exits_2_before_writing(command, tiny_sd_folder, hexagons, tmp_path, monkeypatch):  # noqa: F811
    """What each launched process does with --batch-size 3 across 2 processes (WORLD_SIZE is the launcher's
    word for it): one line naming --batch-size, status 2, no output folder; accelerate is never started."""
    from typer.testing import CliRunner

    from difflab.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "out"
    args = (["--data", str(hexagons), "--trigger", "hexagon"] if command == "lora" else ["--num-images", "4"])
    result = CliRunner().invoke(app, ["train", command, "--base", str(tiny_sd_folder), *args, "-o", str(out),
                                      "--batch-size", "3", "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert "--batch-size 3" in result.output and "multiple of 2" in result.output, result.output
    assert not out.exists()


def test_accelerates_own_mixed_precision_is_refused_not_ignored(monkeypatch):
    from difflab.train.distributed import data_parallel

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="mixed_precision: accelerate launch --mixed_precision fp16"):
        data_parallel(4, "no")


# --- slow: two real processes under accelerate launch ----------------------------------------------------------


def _launch(args: list[str], tmp_path: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch`` (torchrun underneath) of ``python -m difflab ARGS`` in ``processes`` CPU processes,
    gloo, on a free port; this checkout's difflab on their path."""
    import difflab

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = str(Path(difflab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes even where there is a GPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "difflab", *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_close_weights(got: dict, expected: dict, atol: float = WEIGHT_ATOL) -> float:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)
    return max((got[key] - expected[key]).abs().max().item() for key in expected)


def _losses(folder: Path) -> list[float]:
    return [float(line.split(",")[1]) for line in (folder / "loss.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_two_processes_train_the_lora_of_one_and_resume_exactly(tiny_sd_folder, hexagons, tmp_path):  # noqa: F811
    """2 processes x 2 images = the single process's batch of 4: the same LoRA within float tolerance (text-encoder
    LoRA and masked loss on, so every sharded path runs); 2 + 2 resumed steps under 2 processes = 4 straight ones;
    the files load in plain diffusers and draw what the single process's LoRA draws."""
    from diffusers import StableDiffusionPipeline

    from difflab.train.lora import train_lora

    config = _lora_config(tiny_sd_folder, hexagons, text_encoder_lora=True, foreground_weight=4.0, masks="auto",
                          validate_every=4, validation_prompts=("a red hexagon",))
    single = [event.loss for event in train_lora(config, tmp_path / "single", device="cpu")]
    args = ["train", "lora", "--base", str(tiny_sd_folder), "--data", str(hexagons), "--trigger", "hexagon",
            "--rank", "2", "--alpha", "4", "--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "2",
            "--lr", "5e-2", "--seed", "3", "--text-encoder-lora", "--foreground-weight", "4", "--masks", "auto"]
    whole = _launch([*args, "-o", str(tmp_path / "two"), "--steps", "4", "--validate-every", "4",
                     "--validation-prompt", "a red hexagon"], tmp_path)
    assert whole.stdout.splitlines() == [str(tmp_path / "two" / "pytorch_lora_weights.safetensors")]  # main only

    two = tmp_path / "two"
    print("max |weight difference|, 2 processes vs 1:",
          _assert_close_weights(_tensors(two / "pytorch_lora_weights.safetensors"),
                                _tensors(tmp_path / "single" / "pytorch_lora_weights.safetensors")))
    assert _losses(two) == pytest.approx(single, rel=LOSS_RTOL)
    record = json.loads((two / "training.json").read_text())
    assert record["steps_done"] == 4 and record["processes"] == 2
    assert (two / "validation" / "step-000004.png").is_file() and (two / "kohya" / "two.safetensors").is_file()

    # 2 steps, then --resume to 4, both under 2 processes: the straight 2-process run, to the bit
    _launch([*args, "-o", str(tmp_path / "split"), "--steps", "2"], tmp_path)
    _launch([*args, "-o", str(tmp_path / "split"), "--steps", "4", "--resume"], tmp_path)
    split = tmp_path / "split"
    _assert_close_weights(_tensors(split / "training_state.safetensors"), _tensors(two / "training_state.safetensors"),
                          atol=0)
    assert _losses(split) == _losses(two)

    # plain diffusers reads the 2-process file and draws what the single-process LoRA draws
    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return pipe("a red hexagon", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                        output_type="np").images[0]

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder))
    base = draw(pipe)
    pipe.load_lora_weights(str(tmp_path / "single"))
    expected = draw(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(two))
    image = draw(pipe)
    assert np.abs(expected - base).max() > 1e-3, "the LoRA changes nothing: the test could not fail"
    np.testing.assert_allclose(image, expected, atol=1e-4)


@pytest.mark.slow
def test_two_processes_train_the_single_process_controlnet(tiny_sd_folder, tmp_path):  # noqa: F811
    from difflab.train.controlnet import train_controlnet
    from difflab.train.controlnet_config import ControlNetTrainConfig

    settings = dict(num_images=8, steps=3, batch_size=4, warmup_steps=1, checkpoint_every=2, validation_steps=2,
                    seed=5)
    config = ControlNetTrainConfig(base=str(tiny_sd_folder), **settings)
    single = [event.loss for event in train_controlnet(config, tmp_path / "single", device="cpu")]
    _launch(["train", "controlnet", "--base", str(tiny_sd_folder), "-o", str(tmp_path / "two"), "--num-images", "8",
             "--steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "2",
             "--validation-steps", "2", "--seed", "5"], tmp_path)
    difference = _assert_close_weights(_tensors(tmp_path / "two" / "training_state.safetensors"),
                                       _tensors(tmp_path / "single" / "training_state.safetensors"))
    print("max |state difference|, 2 processes vs 1:", difference)
    assert _losses(tmp_path / "two") == pytest.approx(single, rel=LOSS_RTOL)
    assert (tmp_path / "two" / "controlnet" / "config.json").is_file()
    assert (tmp_path / "two" / "validation" / "step-000003.png").is_file()
