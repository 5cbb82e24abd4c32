"""``difflab serve --backend openvino`` (engine/backends, issue 20): the app builds its worker's pipeline cache for
the configured backend (create_app's lifespan, engine.backends.pipeline_cache), and a job drawn through it is
recorded as OpenVINO's and equals the torch server's image within 1/255.

Skipped only when openvino is not importable (the `openvino` extra); .ci/run's OpenVINO step runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from difflab.engine.metadata import parse_parameters  # noqa: E402
from tests.serve.conftest import MODEL, SMALL  # noqa: E402
from tests.serve.test_api import png_of  # noqa: E402

REQUEST = {"prompt": "a red circle on the left", "seed": 7, **SMALL, "guidance": 7.5}


@pytest.fixture
def openvino_client(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An app configured as ``serve --backend openvino`` makes it: no shared cache passed in, so its lifespan builds
    the OpenVINO one. Its own converted-model cache folder, as a fresh machine would have."""
    from fastapi.testclient import TestClient

    from difflab.engine.backends.openvino_cache import CACHE_ENV
    from difflab.serve.app import create_app
    from difflab.serve.config import ServeConfig

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "openvino-cache"))
    config = ServeConfig(data_dir=tmp_path / "openvino-data", models_dir=models_dir, default_model=MODEL, ui=False,
                         backend="openvino", precision="f32")
    with TestClient(create_app(config)) as client:
        yield client


def drawn(client) -> tuple[np.ndarray, dict, dict]:
    """(pixels, infotext settings, JSON record) of the one image of REQUEST drawn by ``client``'s server."""
    response = client.post("/v1/generate", json=REQUEST)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "done", job
    image = png_of(client.get(job["images"][0]["url"]))
    _, _, settings = parse_parameters(image.text["parameters"])
    return np.asarray(image.convert("RGB"), dtype=np.int16), settings, json.loads(image.text["difflab"])


def test_an_openvino_server_draws_the_torch_servers_image(openvino_client, client) -> None:
    openvino_pixels, settings, record = drawn(openvino_client)
    assert settings["Backend"] == "openvino f32"
    assert record["backend"]["name"] == "openvino" and record["backend"]["precision"] == "f32"
    torch_pixels, torch_settings, torch_record = drawn(client)
    assert "Backend" not in torch_settings and torch_record["backend"]["name"] == "torch"
    worst = int(np.abs(openvino_pixels - torch_pixels).max())
    assert worst <= 1, f"the OpenVINO server's image differs from the torch server's by {worst}/255"
