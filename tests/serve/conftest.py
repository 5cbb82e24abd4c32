"""Fixtures for the server tests: the engine's tiny random SD pipeline as the server's only model folder, and an
app (real SQLite queue, real worker thread) driven through FastAPI's TestClient."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported for this folder)

MODEL = "tiny"  # the name the server offers the tiny pipeline under (a folder in its --models-dir)
SMALL = {"model": MODEL, "steps": 2, "width": 32, "height": 32}  # a job of well under a second on one core


@pytest.fixture(scope="session")
def models_dir(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("models")
    (folder / MODEL).symlink_to(tiny_sd_folder, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def pipeline_cache():
    """One cache for every app in the session: the tiny pipeline loads once, as it would in one server."""
    from difflab.engine.pipeline import PipelineCache

    return PipelineCache()


@pytest.fixture
def make_client(models_dir: Path, pipeline_cache, tmp_path: Path):
    """make_client(**config) -> a started TestClient (lifespan run: worker thread up); closed after the test."""
    from fastapi.testclient import TestClient

    from difflab.serve.app import create_app
    from difflab.serve.config import ServeConfig

    clients = []

    def make(**overrides) -> "TestClient":
        settings = {"data_dir": tmp_path / "data", "models_dir": models_dir, "default_model": MODEL, "ui": False,
                    **overrides}
        client = TestClient(create_app(ServeConfig(**settings), cache=pipeline_cache))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> Iterator:
    yield make_client()
