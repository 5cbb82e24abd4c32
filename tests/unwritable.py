"""A folder this process cannot create files in, for the output-location tests (no difflab import, so the tests
that use it also run against older code)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def _can_create_files_in(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def unwritable_folder(tmp_path: Path) -> Path:
    """chmod 0500 for a normal user; for root, who ignores modes, sysfs, which refuses new entries even to root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if not _can_create_files_in(folder):
        return folder
    if Path("/sys/kernel").is_dir() and not _can_create_files_in(Path("/sys/kernel")):
        return Path("/sys/kernel")
    pytest.skip("no folder here refuses writes to this user")
