"""--compile (engine/compile.py): a torch.compile'd U-Net draws eager's images within 1/255, says so in the PNG's
record, and leaves compiled artefacts in difflab's cache folder for the next process.

The compiling tests take minutes (one compile of a tiny U-Net, read back from the disk cache by the second test),
so they are `slow` and run only when asked: ``scripts/test.sh -n 0 -m slow tests/engine/test_compile.py`` (their
own .ci/run step). A new image size is not among them: on the tiny pipeline 48x32 (6x4 latents, 3x2 after the
down block) compiled anew, 604 s on tiny-shapes at load 4 (bench/results/compile.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from difflab.engine import compile as engine_compile
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request


def request(folder: Path, **fields):
    # guidance_end < 1: the U-Net is called at batch 2 (CFG) and then at batch 1 within one image, the case
    # that made dynamic shapes the choice; n=2 and a second size below change the batch and the latents' size
    return build_request(**{"prompt": "a red circle on the left, blue background", "model": str(folder),
                            "width": 64, "height": 64, "steps": 4, "guidance": 7.5, "guidance_end": 0.5, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_cache_folder_is_difflabs_unless_the_user_names_one(monkeypatch, tmp_path):
    monkeypatch.delenv(engine_compile.CACHE_ENV, raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine_compile.cache_dir() == tmp_path / "xdg" / "difflab" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-own"))
    assert engine_compile.cache_dir() == tmp_path / "torch-own"
    monkeypatch.setenv(engine_compile.CACHE_ENV, str(tmp_path / "difflab-own"))
    assert engine_compile.cache_dir() == tmp_path / "difflab-own"


def test_torchs_own_default_folder_is_not_taken_for_the_users_choice(monkeypatch, tmp_path):
    """Importing diffusers' pipelines makes torch write its default (/tmp/torchinductor_USER) into
    TORCHINDUCTOR_CACHE_DIR; difflab's cache then went to /tmp instead of ~/.cache/difflab/torch-compile."""
    import subprocess
    import sys

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv(engine_compile.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert engine_compile.cache_dir() == tmp_path / "xdg" / "difflab" / "torch-compile"
    # in a fresh process, as `difflab batch --compile` meets it: the engine imported first
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    said = subprocess.run([sys.executable, "-c", "import os; import difflab.engine.pipeline; "
                           "from difflab.engine.compile import cache_dir; "
                           "print(os.environ.get('TORCHINDUCTOR_CACHE_DIR')); print(cache_dir())"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert said[-1] == str(tmp_path / "xdg" / "difflab" / "torch-compile"), said


def test_notice_names_the_cost_and_the_folder_and_knows_a_warm_cache(tmp_path):
    cold = engine_compile.notice(tmp_path)
    assert cold.startswith(f"compiling the U-Net: first image takes ~{engine_compile.FIRST_IMAGE_EXTRA_S} s longer")
    assert cold.endswith(f"cache at {tmp_path}")
    (tmp_path / "fxgraph" / "ab").mkdir(parents=True)
    warm = engine_compile.notice(tmp_path)
    assert "compiled graphs found in the cache" in warm and warm.endswith(f"cache at {tmp_path}")


@pytest.fixture
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("compiles a U-Net (minutes): `scripts/test.sh -n 0 -m slow tests/engine/test_compile.py`")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """One Inductor cache folder for the file's tests: the first fills it, the batch test reads it back as a later
    process would (and so costs a trace, not a compile)."""
    return tmp_path_factory.mktemp("compile-cache")


@pytest.mark.slow
@pytest.mark.usefixtures("_only_when_asked")
def test_compiled_unet_draws_eagers_images_and_fills_the_disk_cache(tiny_sd_folder, tmp_path, monkeypatch,
                                                                     compile_cache):
    import torch

    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result

    monkeypatch.setenv(engine_compile.CACHE_ENV, str(compile_cache))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(compile_cache))  # restored after the test
    torch._dynamo.reset()
    eager, compiled = PipelineCache(), PipelineCache(compile=True)
    graphs = []
    for fields in (dict(), dict(n=2, seed=5)):  # batch 2 then 1 (guidance interval), then 4 then 2
        want = run(request(tiny_sd_folder, **fields), eager)
        got = run(request(tiny_sd_folder, **fields), compiled)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        assert got.compiled and not want.compiled
        for mine, theirs in zip(got.images, want.images):
            difference = np.abs(pixels(mine) - pixels(theirs)).max()
            assert difference <= 1, f"{fields}: compiled differs from eager by {difference}/255"
    pipeline, _ = compiled.get(compiled_model(tiny_sd_folder))
    assert engine_compile.is_compiled(pipeline.unet)
    # dynamic=True: the first image compiled a graph for batch 2 (CFG) and one for batch 1 (torch specialises
    # sizes 0 and 1); n=2 (batches 4 and 2) reused them, where static shapes would have compiled batch 4 anew
    assert graphs[1] == graphs[0], graphs

    folder = compile_cache
    assert engine_compile.is_warm(folder), sorted(p.name for p in folder.iterdir())
    path = save_result(got, tmp_path / "out")[0]
    _, record = read_png_metadata(path)
    assert record["environment"]["compile"].startswith("torch.compile")

    # a fresh compile of the same U-Net (dynamo's in-memory state dropped, as in a new process) reads Inductor's
    # compiled graphs back from the folder instead of compiling them again
    torch._dynamo.reset()
    hits_before = torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"]
    again = run(request(tiny_sd_folder), PipelineCache(compile=True))
    assert torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"] > hits_before
    assert np.abs(pixels(again.images[0]) - pixels(run(request(tiny_sd_folder), eager).images[0])).max() <= 1


@pytest.mark.slow
@pytest.mark.usefixtures("_only_when_asked")
def test_batch_compile_says_what_it_costs_and_records_it(tiny_sd_folder, tmp_path, monkeypatch, compile_cache):
    from typer.testing import CliRunner

    from difflab.cli import app
    from difflab.engine.metadata import read_png_metadata

    import torch

    folder = compile_cache
    warm = engine_compile.is_warm(folder)  # the test above ran first: its graphs are read back, not compiled
    monkeypatch.setenv(engine_compile.CACHE_ENV, str(folder))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    torch._dynamo.reset()  # as a new process: nothing compiled in memory
    prompts = tmp_path / "prompts.jsonl"
    # the first test's request (size, steps, guidance interval), so its compiled graphs fit
    prompts.write_text(json.dumps(request(tiny_sd_folder).model_dump(exclude_defaults=True)) + "\n")
    done = CliRunner().invoke(app, ["batch", str(prompts), "-o", str(tmp_path / "out"), "--model",
                                    str(tiny_sd_folder), "--compile"])
    assert done.exit_code == 0, done.output
    said = ("compiling the U-Net: compiled graphs found in the cache" if warm else
            f"compiling the U-Net: first image takes ~{engine_compile.FIRST_IMAGE_EXTRA_S} s longer")
    assert said in done.output and f"cache at {folder}" in done.output, done.output
    images = sorted((tmp_path / "out").glob("*.png"))
    assert images and read_png_metadata(images[0])[1]["environment"]["compile"].startswith("torch.compile")
    assert engine_compile.is_warm(folder)


def test_serve_compile_gives_the_worker_a_compiling_cache(tmp_path):
    from fastapi.testclient import TestClient

    from difflab.serve.app import create_app
    from difflab.serve.config import ServeConfig

    for compile_unet in (True, False):
        with TestClient(create_app(ServeConfig(data_dir=tmp_path / str(compile_unet), compile=compile_unet))) as client:
            assert client.app.state.server.worker.cache.compile is compile_unet


def compiled_model(folder: Path):
    from difflab.engine.registry import resolve_model

    return resolve_model(str(folder), False)


def test_json_record_has_no_compile_entry_when_eager(tiny_sd_folder, tmp_path):
    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result

    result = run(request(tiny_sd_folder, steps=2), PipelineCache())
    _, record = read_png_metadata(save_result(result, tmp_path)[0])
    assert "compile" not in record["environment"]
    json.dumps(record)
