"""Atomic file writes: a reader sees the old file, or no file, or the whole new one, never half of it.

Standard library only, so every layer (``core`` checkpoints, the engine's images, the command line's outputs)
writes through the same two functions.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (so the final rename is atomic), readable like a normal file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs and checkpoints are meant to be shared
    return fd, tmp


def _write_temporary(path: Path, data: bytes) -> str:
    """``data`` fully written and flushed to disk in a temporary file beside ``path``; returns its name."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file."""
    path = Path(path)
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_new_file(folder: Path, data: bytes, names: Iterable[str]) -> Path:
    """Write ``data`` under the first of ``names`` (file names in ``folder``) that is free, and return its path;
    never replaces a file. The bytes are written first and then given the name in one exclusive step, so a reader
    never sees half a file and two processes never take the same name: the one that loses a name takes the next.
    ``names`` is read lazily, after the bytes are on disk (a numbering scheme may look at the folder again)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _write_temporary(folder / "new", data)
    try:
        for name in names:
            try:
                _claim(tmp, folder / name)
                return folder / name
            except FileExistsError:
                continue
        raise FileExistsError(f"{str(folder)!r}: every name offered for the new file is taken")
    finally:
        Path(tmp).unlink(missing_ok=True)


def _claim(temporary: str, path: Path) -> None:
    """Give ``temporary``'s content the name ``path``, atomically, failing with FileExistsError if it exists."""
    try:
        os.link(temporary, path)  # atomic and exclusive: fails if the name exists
        return
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # a file system without hard links (FAT, some network shares): reserve the name exclusively, then move the
    # finished file over the empty reservation; a reader may see the empty file for a moment, never another's
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.replace(temporary, path)
