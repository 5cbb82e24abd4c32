"""Memory knobs: parsed and validated as a request field, applied to the cached pipeline without leaking into the
next request, close to the plain images, and the one automatic retry after a CUDA out-of-memory error.

Tolerances, measured on this CPU with the tiny SD fixture (4 steps, n=2, `python` loop over the knob sets):
attention slicing and VAE slicing change pixels by at most 1/255 (float summation order); VAE tiling changes
nothing while the image fits one tile (64 px here, the VAE's sample_size) and, at 128 px (2x2 tiles blended at the
seams), max 43/255 and mean 3.4/255 on this random-weight VAE, whose outputs are high-frequency noise; the bounds
below leave a small margin over those numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine import memory
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.registry import resolve_model
from difflab.engine.request import RequestError, build_request

CACHE = PipelineCache()


def request(folder: Path, size: int = 64, **fields):
    return build_request(**{"prompt": "a red circle on the left, blue background", "model": str(folder),
                            "width": size, "height": size, "steps": 4, "n": 2, **fields})


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def difference(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float]:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b)), max(float(np.abs(x - y).mean()) for x, y in zip(a, b))


def test_knobs_parse_from_repeats_and_comma_lists() -> None:
    assert memory.parse_knobs(["vae-tiling,attention_slicing", "vae_slicing", "attention_slicing"]) == (
        "attention_slicing", "vae_slicing", "vae_tiling")  # ladder order, no duplicates
    assert build_request(prompt="x", memory="vae_tiling").memory == ("vae_tiling",)
    with pytest.raises(RequestError, match=r"^memory: unknown knob 'turbo'; choose from attention_slicing"):
        build_request(prompt="x", memory=["turbo"])
    with pytest.raises(ValueError, match="memory: choose one of model_cpu_offload and sequential_cpu_offload"):
        memory.parse_knobs("model_cpu_offload,sequential_cpu_offload")


def test_offload_is_refused_on_the_cpu(tiny_sd_folder: Path) -> None:
    with pytest.raises(ValueError, match="^memory: model_cpu_offload moves weights between CPU and GPU memory"):
        run(request(tiny_sd_folder, memory=["model_cpu_offload"]), CACHE)


def test_ladder_order() -> None:
    assert memory.next_knob((), "cuda") == "attention_slicing"
    assert memory.next_knob(("attention_slicing", "vae_slicing", "vae_tiling"), "cuda") == "model_cpu_offload"
    assert memory.next_knob(("attention_slicing", "vae_slicing", "vae_tiling", "model_cpu_offload"), "cuda") is None
    assert memory.next_knob(("attention_slicing", "vae_slicing", "vae_tiling"), "cpu") is None


@pytest.mark.parametrize("knobs,max_allowed", [(["attention_slicing"], 1), (["vae_slicing"], 1), (["vae_tiling"], 1)])
def test_cpu_knobs_stay_close_to_the_plain_images(tiny_sd_folder: Path, knobs, max_allowed: int) -> None:
    plain = pixels(run(request(tiny_sd_folder), CACHE))
    knobbed = run(request(tiny_sd_folder, memory=knobs), CACHE)
    pipeline = CACHE.get(resolve_model(str(tiny_sd_folder)))[0]
    assert memory.current_knobs(pipeline) == tuple(knobs)
    assert difference(plain, pixels(knobbed))[0] <= max_allowed
    assert all(np.array_equal(a, b) for a, b in zip(plain, pixels(run(request(tiny_sd_folder), CACHE))))  # no leak
    assert memory.current_knobs(pipeline) == ()


def test_vae_tiling_on_an_image_larger_than_a_tile(tiny_sd_folder: Path) -> None:
    plain = pixels(run(request(tiny_sd_folder, size=128), CACHE))
    tiled = pixels(run(request(tiny_sd_folder, size=128, memory=["vae_tiling"]), CACHE))
    largest, mean = difference(plain, tiled)
    assert largest > 0, "tiling did not change the decode: the knob was not applied"
    assert largest <= 48 and mean <= 4.0, (largest, mean)


@pytest.fixture
def oom_on_first_calls(monkeypatch):
    """StableDiffusionPipeline.__call__ raising torch.cuda.OutOfMemoryError on its first ``count[0]`` calls: the
    thing under test is the retry policy, not the pipeline, so the error is injected on the CPU."""
    from diffusers import StableDiffusionPipeline

    real_call = StableDiffusionPipeline.__call__
    state = {"fail": 1, "calls": 0, "knobs": []}

    def call(self, *args, **kwargs):
        state["calls"] += 1
        state["knobs"].append(memory.current_knobs(self))
        if state["calls"] <= state["fail"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", call)
    return state


def test_one_retry_with_the_next_knob_after_an_oom(tiny_sd_folder: Path, oom_on_first_calls, capsys) -> None:
    plain = pixels(run(request(tiny_sd_folder, memory=["attention_slicing"]), CACHE))  # the first call fails...
    assert oom_on_first_calls["calls"] == 2
    # ...and the retry ran with the next knob of the ladder on, drawing the same seeds' images
    assert oom_on_first_calls["knobs"] == [("attention_slicing",), ("attention_slicing", "vae_slicing")]
    assert "retrying once with memory knob vae_slicing" in capsys.readouterr().err
    result = run(request(tiny_sd_folder, memory=["attention_slicing", "vae_slicing"]), CACHE)
    assert difference(plain, pixels(result))[0] <= 1 and result.notes == []
    oom_on_first_calls.update(fail=oom_on_first_calls["calls"] + 1)
    retried = run(request(tiny_sd_folder), CACHE)
    assert retried.notes == ["out of GPU memory; retrying once with memory knob attention_slicing "
                             "(on now: attention_slicing)"]


def test_a_second_oom_is_a_clear_error_not_a_loop(tiny_sd_folder: Path, oom_on_first_calls) -> None:
    oom_on_first_calls["fail"] = 10
    with pytest.raises(memory.OutOfMemory, match="out of GPU memory again after turning on attention_slicing"):
        run(request(tiny_sd_folder), CACHE)
    assert oom_on_first_calls["calls"] == 2
