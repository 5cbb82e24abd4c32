"""The on-disk cache of converted OpenVINO models: one folder per entry, found again by what it was converted from.

Converting a U-Net of Stable Diffusion 1.5's size takes about two minutes (issue 20), so a second process must
find the first one's work. An entry is the folder ``<root>/<key>/`` holding ``model.xml`` + ``model.bin`` (the
OpenVINO IR) and ``manifest.json``; ``key`` is the SHA-256 of the entry's *identity*: a JSON object naming the
component, the hashes of the weights it was converted from (difflab.io.hashing), the LoRAs fused into it with
their weights, the input size, the precision and the library versions that did the conversion.

Writes are atomic: an entry is built in a temporary folder beside its final place, its manifest (each file's
size, modification time and SHA-256) written last, and the folder renamed into place in one step, so a reader sees
a whole entry or none.

Reading checks every file against the manifest without re-hashing what has not been touched: a file whose size
differs is corrupt (a truncated copy, a half-deleted file); a file whose size and ``mtime_ns`` both match is
trusted unread; a file whose size matches but whose mtime differs is hashed, and is corrupt only if its SHA-256
differs (otherwise its new mtime is recorded, so the next process trusts it again). A corrupt entry is reported,
moved out of the way and rebuilt, never loaded. Re-hashing every file on every start-up read and hashed the
3.4 GB of an SD 1.5 U-Net entry each time (about 3 s on this machine's 1.1 GB/s SHA-256, more from a cold disk).
The trade-off, said plainly: an edit that keeps the file's size *and* puts its old mtime back (``os.utime``,
``touch -d``) is not detected by a load. ``verify(folder, full=True)`` hashes every file regardless, and
``python -m difflab.engine.backends.openvino_cache`` runs that on every entry (removing the corrupt ones).
Manifests written before mtimes were recorded are hashed in full, as before, once: a file that matches gets its
mtime recorded then.

Beside the entries, ``<root>/compiled/<key>-<precision>/`` holds what OpenVINO compiled from entry ``<key>``
(its own model cache, CACHE_DIR), checked the same way: openvino_compiled.py.

The root is ``$DIFFLAB_OPENVINO_CACHE``, else the user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then
``difflab/openvino``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

CACHE_ENV = "DIFFLAB_OPENVINO_CACHE"
MANIFEST = "manifest.json"
MODEL_XML, MODEL_BIN = "model.xml", "model.bin"
COMPILED = "compiled"  # OpenVINO's compiled blobs, one folder per entry and precision (openvino_compiled.py)
ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # entry_key's folder names
FORMAT = 1  # bump when the entry layout or the wrappers' traced signatures change: old entries are then ignored


def cache_root() -> Path:
    """``$DIFFLAB_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/difflab/openvino`` (``~/.cache/difflab/openvino``)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "difflab" / "openvino"


def entry_key(identity: dict[str, Any]) -> str:
    """The folder name of an entry: SHA-256 of its identity as canonical JSON (first 32 hex digits)."""
    canonical = json.dumps({**identity, "format": FORMAT}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def compiled_folder(entry_folder: Path, precision: str) -> Path:
    """The CACHE_DIR for what OpenVINO compiles from the entry in ``entry_folder`` at ``precision``."""
    return entry_folder.parent / COMPILED / f"{entry_folder.name}-{precision}"


class CorruptEntry(Exception):
    """An entry whose files do not match its manifest (truncated, edited, half-deleted)."""


@dataclass(frozen=True)
class Entry:
    folder: Path

    @property
    def xml(self) -> Path:
        return self.folder / MODEL_XML

    @property
    def bin(self) -> Path:
        return self.folder / MODEL_BIN


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, expected: dict[str, Any], full: bool = False) -> Optional[int]:
    """CorruptEntry unless the file at ``path`` matches ``expected`` (its size, mtime_ns and sha256 as recorded).
    A file whose size and mtime match is trusted unread unless ``full``. Returns the file's mtime_ns when it had
    to be hashed and matched under an mtime other than the recorded one (the caller records it), else None."""
    try:
        status = path.stat()
    except OSError:
        raise CorruptEntry(f"{path.name} is missing") from None
    if status.st_size != expected["size"]:  # the cheap check first: a truncated file is found without reading it
        raise CorruptEntry(f"{path.name} has {status.st_size} bytes, the manifest says {expected['size']}")
    if not full and expected.get("mtime_ns") == status.st_mtime_ns:
        return None
    if _sha256(path) != expected["sha256"]:
        raise CorruptEntry(f"{path.name} does not match its SHA-256 in the manifest")
    # a new mtime, or a manifest from before mtimes were recorded
    return status.st_mtime_ns if expected.get("mtime_ns") != status.st_mtime_ns else None


def verify(folder: Path, full: bool = False) -> Entry:
    """The entry in ``folder`` if every file matches its manifest; CorruptEntry saying which does not.

    ``full``: hash every file. Otherwise a file whose size and mtime match the manifest's is trusted unread (see
    the module's docstring for what that misses)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptEntry(f"{MANIFEST} unreadable ({error})") from None
    for name in (MODEL_XML, MODEL_BIN):
        if name not in files:
            raise CorruptEntry(f"{MANIFEST} lists no {name}")
    touched = {}  # files whose hash matched under a new mtime: recorded so the next load trusts them
    for name, expected in files.items():
        mtime_ns = check_file(folder / name, expected, full)
        if mtime_ns is not None:
            touched[name] = mtime_ns
    if touched:
        for name, mtime_ns in touched.items():
            files[name]["mtime_ns"] = mtime_ns
        write_json(folder / MANIFEST, manifest, best_effort=True)
    return Entry(folder)


def file_record(path: Path) -> dict[str, Any]:
    """What a manifest records of a file, for ``check_file``."""
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": _sha256(path)}


def write_json(path: Path, value: Any, best_effort: bool = False) -> None:
    """Temporary file, fsync, rename: a reader sees the old file or the new one, never half of one.
    ``best_effort``: an OSError is ignored (a read-only cache still loads; it only hashes again next time)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            json.dump(value, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        if not best_effort:
            raise


def lookup(identity: dict[str, Any], say: Callable[[str], None], root: Optional[Path] = None) -> Optional[Entry]:
    """The verified entry for ``identity``, or None (absent, or corrupt: then it is moved aside and removed)."""
    folder = (root or cache_root()) / entry_key(identity)
    if not folder.exists():
        return None
    try:
        return verify(folder)
    except CorruptEntry as error:
        say(f"openvino cache: entry {folder} is corrupt ({error}); removing it and converting again")
        _discard(folder)
        return None


def _discard(folder: Path) -> None:
    """Remove a bad entry and what OpenVINO compiled from it. The entry is moved aside first (one rename: no
    reader can meet it half-deleted)."""
    for compiled in (folder.parent / COMPILED).glob(f"{folder.name}-*"):
        _remove(compiled)
    _remove(folder)


def store(identity: dict[str, Any], write: Callable[[Path], None], root: Optional[Path] = None) -> Entry:
    """Build an entry: ``write(folder)`` saves model.xml and model.bin into a temporary folder, the manifest is
    written last, and the folder is renamed into place atomically. Another process that finished the same entry
    first wins; its entry is kept (both were converted from the same identity)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / entry_key(identity)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        write(staging)
        files = {}
        for name in (MODEL_XML, MODEL_BIN):
            path = staging / name
            with open(path, "rb+") as handle:  # on disk before the manifest says it is whole
                os.fsync(handle.fileno())
            files[name] = file_record(path)  # renaming the folder below keeps the files' mtimes
        manifest = {"identity": identity, "files": files, "format": FORMAT,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(staging / MANIFEST, manifest)
        try:
            os.rename(staging, final)  # atomic; fails when the final folder exists (another writer, or a leftover)
        except OSError:
            try:
                return verify(final)
            except CorruptEntry:
                _discard(final)
                os.rename(staging, final)
        return Entry(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Move a folder aside (one rename), then delete it."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.corrupt")
    try:
        os.rename(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def verify_all(root: Optional[Path] = None, say: Callable[[str], None] = print) -> tuple[int, int]:
    """Hash every file of every entry under ``root`` (``verify(full=True)``), removing the corrupt ones, and every
    compiled blob (openvino_compiled.check_blobs), removing those that do not match: the check a load skips for
    files whose size and mtime are unchanged. Returns (entries whole, entries removed)."""
    from difflab.engine.backends.openvino_compiled import check_blobs

    root = root or cache_root()
    whole = removed = 0
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if not folder.is_dir() or not ENTRY_NAME.fullmatch(folder.name):  # staging, discarded, compiled/ folders
            continue
        try:
            verify(folder, full=True)
            whole += 1
        except CorruptEntry as error:
            say(f"openvino cache: entry {folder} is corrupt ({error}); removed")
            _discard(folder)
            removed += 1
    blobs_removed = sum(check_blobs(folder, say, full=True) for folder in sorted((root / COMPILED).glob("*-*")))
    say(f"openvino cache {root}: {whole} entries whole, {removed} corrupt removed; "
        f"{blobs_removed} corrupt compiled blob(s) removed")
    return whole, removed


if __name__ == "__main__":  # python -m difflab.engine.backends.openvino_cache: the full check of every entry
    verify_all()
