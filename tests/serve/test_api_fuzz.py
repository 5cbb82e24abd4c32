"""A live ``difflab serve`` on the bundled tiny-shapes model, fuzzed from its own OpenAPI schema (issue 19), and
driven by webuiapi, a real AUTOMATIC1111 client. Needs the ``fuzz`` extra (schemathesis, webuiapi); runs in its own
CI step (``scripts/test.sh -n 0 -m fuzz``), as it takes about a minute. The full >= 1000-case run is
bench/fuzz_api.py (bench/results/fuzz-api.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.serve.live_server import LiveServer

pytestmark = pytest.mark.fuzz
CASES_PER_OPERATION = 12  # x 2 generation modes; operations without parameters have 1 case: about 200 requests


@pytest.fixture(autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a minute of API fuzzing: its own CI step, `scripts/test.sh -n 0 -m fuzz`")


@pytest.fixture(scope="module")
def tiny_shapes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from difflab.engine.registry import BUNDLED_DIR

    root = tmp_path_factory.mktemp("fuzz")
    models = root / "models"
    models.mkdir()
    (models / "tiny").symlink_to(BUNDLED_DIR / "tiny-shapes", target_is_directory=True)  # the name LiveServer uses
    with LiveServer(root / "data", models) as server:
        yield server


def test_no_generated_request_gets_a_5xx(tiny_shapes_server: LiveServer) -> None:
    pytest.importorskip("schemathesis", reason="the fuzz extra: pip install -e '.[fuzz]'")
    from tests.serve.api_fuzz import fuzz, table

    result = fuzz(tiny_shapes_server.url, CASES_PER_OPERATION, seed=19)
    print(table(result))
    assert result.cases >= 150 and len(result.statuses) >= 15, table(result)
    assert result.server_errors == 0, "\n".join(f"{f.status} {f.request} -> {f.answer}" for f in result.findings)
    assert result.failed_jobs == [], result.failed_jobs
    accepted = sum(count for counter in result.statuses.values() for status, count in counter.items()
                   if status is not None and status < 300)
    assert accepted >= 20, table(result)  # the fuzzer also reached the engine, not only the validation


def test_webuiapi_drives_the_a1111_endpoints(tiny_shapes_server: LiveServer) -> None:
    webuiapi = pytest.importorskip("webuiapi", reason="the fuzz extra: pip install -e '.[fuzz]'")

    api = webuiapi.WebUIApi(baseurl=f"{tiny_shapes_server.url}/sdapi/v1", sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a red circle", seed=5, width=32, height=32)  # every field webuiapi sends
    assert result.image.size == (32, 32) and result.info["all_seeds"] == [5]
    again = api.img2img(images=[result.image], prompt="a blue circle", seed=5, width=32, height=32,
                        denoising_strength=0.5)
    assert again.image.size == (32, 32) and again.info["denoising_strength"] == 0.5
    with pytest.raises(RuntimeError) as refused:  # webuiapi raises on any answer but 200
        api.txt2img(prompt="x", width=32, height=32, override_settings={"eta_noise_seed_delta": 31337})
    assert refused.value.args[0] == 422 and "override_settings.eta_noise_seed_delta" in refused.value.args[1]
    models = api.get_sd_models()
    assert "tiny" in [model["model_name"] for model in models]
    assert all("/" not in model["filename"] for model in models)  # names, never server paths
