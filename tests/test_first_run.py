"""A clean first run: `difflab generate` in a fresh process prints its paths on stdout and, on stderr, nothing but
its own progress bar: no diffusers FutureWarning (`torch_dtype` is deprecated), no transformers notes about
torchvision, no "Loading pipeline components" or "Loading weights" bars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import difflab

SRC = Path(difflab.__file__).parents[1]  # the difflab under test, also in the child process


def test_generate_prints_only_its_own_lines(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHONWARNINGS", "TRANSFORMERS_", "DIFFUSERS_", "HF_HUB_DISABLE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "difflab.cli", "generate", "a red circle", "--steps", "1",
                           "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [Path(line).parent for line in done.stdout.split()] == [tmp_path / "out"]
    foreign = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("generating ")]
    assert not foreign, "\n".join(foreign)
