"""ExclusiveFileLock: "only one process works in this folder", on Linux, macOS and Windows alike.

``difflab batch`` (one run per output folder) and ``difflab serve`` (one server per data folder) each hold one
for their lifetime. The lock is the operating system's own (``flock`` on Unix, ``LockFileEx`` on Windows, through
the ``filelock`` package's ``lock_descriptor``), never a marker file: the OS drops it when the process dies, even
by SIGKILL or a power cut, so a crash never leaves a stale lock to clean up by hand. The file itself stays (it
holds the holder's pid, for a human who wonders who has it); only the lock on it matters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class LockHeld(OSError):
    """Another process holds the lock."""


class ExclusiveFileLock:
    """``with ExclusiveFileLock(path):`` or ``acquire()`` / ``release()``; never waits: a held lock raises LockHeld
    at once. Two holders in one process conflict too (each has its own open file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> "ExclusiveFileLock":
        from filelock import lock_descriptor

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = lock_descriptor(fd, blocking=False)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise LockHeld(f"{self.path} is locked by another process")
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return self

    def release(self) -> None:
        """Closing the file releases the lock (also what the OS does when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "ExclusiveFileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
