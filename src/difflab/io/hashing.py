"""SHA-256 of files: the hashes A1111 writes (model, VAE, TI and input hashes) and difflab's records keep."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 as hex, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file_sha256(path: str | Path) -> str:
    """``file_sha256``, remembered per (path, modification time, size): hashing a 5 GB U-Net takes seconds, and it
    is the same for every image drawn with it."""
    path = Path(path).expanduser()
    stat = path.stat()
    return _cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)
