"""The folder lock of `difflab batch` and `difflab serve` (io.locks): a second holder is refused with the commands'
own one-line errors, the OS frees it when the holder is killed with SIGKILL, and nothing needs Unix's fcntl."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from difflab.engine.batch import LOCK_FILE, BatchError, FolderLock
from difflab.io.locks import ExclusiveFileLock, LockHeld

HOLD = """
import sys, time
from difflab.io.locks import ExclusiveFileLock
ExclusiveFileLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_in_subprocess(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_lock_held_by_a_process_killed_with_sigkill_is_free_again(tmp_path: Path) -> None:
    from difflab.serve.app import DataDirLocked, _lock_data_dir

    holders = [hold_in_subprocess(tmp_path / "server.lock"), hold_in_subprocess(tmp_path / LOCK_FILE)]
    try:
        with pytest.raises(DataDirLocked, match="data_dir: .* is in use by another difflab server"):
            _lock_data_dir(tmp_path)
        with pytest.raises(BatchError, match="another difflab batch is writing"):
            FolderLock(tmp_path).__enter__()
        with pytest.raises(LockHeld):
            ExclusiveFileLock(tmp_path / LOCK_FILE).acquire()
    finally:
        for process in holders:
            process.send_signal(signal.SIGKILL)  # no clean-up of any kind runs
            process.wait(30)
    _lock_data_dir(tmp_path).release()
    with FolderLock(tmp_path):
        with pytest.raises(BatchError):  # and a second holder in one process is refused too
            FolderLock(tmp_path).__enter__()
    assert (tmp_path / "server.lock").read_text().isdigit()  # the last holder's pid, for a curious human


def test_batch_and_serve_import_without_fcntl(tmp_path: Path) -> None:
    """Windows has no fcntl: with it hidden, both commands' modules load (the batch module failed to import
    before io.locks) and the lock module loads."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import difflab.engine.batch, difflab.serve.app, difflab.io.locks\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
