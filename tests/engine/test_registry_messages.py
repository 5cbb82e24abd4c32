"""What a user reads when a model is not there: a missing file is "no such file" (not the hub's "Repo id must use
alphanumeric chars"), and `difflab pull` without network is one line that says how to bring weights in offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import difflab
from difflab.cli import app
from difflab.engine.registry import resolve_model

runner = CliRunner()


@pytest.mark.parametrize("name,what", [("./nothere.safetensors", "file"), ("nothere.safetensors", "file"),
                                       ("models/nothere.safetensors", "file"), ("../models/sd15", "folder"),
                                       ("~/no-such-difflab-model", "folder")])
def test_a_missing_path_says_it_does_not_exist(name: str, what: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"^model {name!r}: no such {what} \\("):
        resolve_model(name)
    result = runner.invoke(app, ["generate", "a circle", "--model", name, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith(f"error: model {name!r}: no such {what}")
    assert "Repo id" not in result.output and not (tmp_path / "out").exists()


def test_a_hub_id_not_in_the_cache_names_hf_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as caught:
        resolve_model("someone/some-model")
    assert "`hf download someone/some-model`" in str(caught.value) and "huggingface-cli" not in str(caught.value)


def test_pull_without_network_is_one_line_saying_how_to_bring_weights_in(tmp_path: Path) -> None:
    """A real failure to reach the hub: its endpoint is a local port nothing listens on (connection refused),
    with an empty cache. It was a 122-line traceback."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(Path(difflab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-m", "difflab.cli", "pull", "sd15"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    line = done.stderr
    assert line.startswith("error: pull 'sd15': the Hugging Face hub cannot be reached (")
    assert "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5`" in line and "huggingface-cli" not in line
    assert str(tmp_path / "hf" / "hub") in line  # where the cache goes, to copy it there
