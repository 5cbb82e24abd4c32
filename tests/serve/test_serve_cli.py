"""`difflab serve`: refuses a public bind without a token (exit 2, one line), and `generate` never imports FastAPI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from difflab.cli import app

runner = CliRunner()


def test_public_bind_without_token_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "data")],
                           env={"DIFFLAB_API_TOKEN": ""})
    assert result.exit_code == 2, result.output
    assert "host: binding to '0.0.0.0' (beyond loopback) requires --api-token" in result.output
    assert result.output.strip().count("\n") == 0 and not (tmp_path / "data").exists()


def test_short_token_and_bad_queue_size_are_refused(tmp_path: Path) -> None:
    short = runner.invoke(app, ["serve", "--api-token", "abc", "--data-dir", str(tmp_path)])
    assert short.exit_code == 2 and "api_token: must be at least 16 characters" in short.output
    queue = runner.invoke(app, ["serve", "--max-queue", "0", "--data-dir", str(tmp_path)])
    assert queue.exit_code == 2 and "max_queue: must be between 1 and 100000" in queue.output


def test_help_and_no_server_imports_for_other_commands() -> None:
    assert "--api-token" in runner.invoke(app, ["serve", "--help"]).output
    code = "import sys, difflab.cli; assert not any(m.split('.')[0] in ('fastapi', 'uvicorn') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
