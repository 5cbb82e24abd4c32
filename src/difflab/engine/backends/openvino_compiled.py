"""Compiling a cached entry through OpenVINO's own model cache (``CACHE_DIR``), so a second process skips
compilation as well as conversion; its blobs checked the way openvino_cache.py checks an entry.

What OpenVINO does with ``compile_model(model.xml, "CPU", {"CACHE_DIR": folder})`` (openvino 2026.4; docs "Model
Caching Overview"; src/inference/src/dev/core_impl.cpp and compilation_context.cpp):

- the blob is ``<folder>/<hash>.blob``, the hash of the model file's absolute path and the compile options the
  plugin declares as changing the compiled model; its header holds OpenVINO's build number and the model file's
  path, mtime (seconds) and size;
- a blob whose header does not match (another OpenVINO build, a rebuilt model.xml) or that fails to import (a
  truncated one) is deleted and the model compiled again, silently;
- nothing checks a blob's contents: some damage makes the import fail (then as above), some imports as
  ``LOADED_FROM_CACHE`` and computes wrong outputs. Measured here, 4,096 bytes inverted in a tiny SD U-Net's
  blob: at 50% of the file the import failed and OpenVINO compiled again; at 20% it loaded, and its outputs were
  1.7 away from the right ones (tiny-shapes' U-Net, at 50%: loaded, 4.1 away);
- the blob is written straight to its final name, not through a temporary file, and made read-only.

So difflab (1) gives each entry and precision a CACHE_DIR of its own, ``<root>/compiled/<key>-<precision>/``:
a blob's owner is known (a corrupt entry's blobs go with it), and precisions never share a blob (this CPU
plugin lists only FULL_DEVICE_NAME among its caching properties, and loaded an f32 blob for a bf16 hint; on a
CPU without bf16 both compile to f32, but nothing here relies on that); (2) records each blob's size, mtime_ns
and SHA-256 in ``blobs.json`` after OpenVINO writes it (hashing it once); and (3) before each compile, deletes
every blob that is unrecorded or does not match its record (``check_blobs``, openvino_cache.check_file: size
and mtime unchanged is trusted, with the same trade-off), so OpenVINO compiles and writes it again. An
unrecorded blob is one a process was killed before recording, or one another process is writing right now:
deleting it costs at most a compilation, never a wrong load.

The blob holds the compiled weights: on disk it is about the size of model.bin again (3.4 GB more for an SD 1.5
U-Net), the price of skipping compilation (4.5 s for that U-Net on an idle machine, issue 20).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from difflab.engine.backends.openvino_cache import (CorruptEntry, Entry, check_file, compiled_folder, file_record,
                                                    write_json)

BLOBS = "blobs.json"


def _blob_files(folder: Path) -> list[Path]:
    """What OpenVINO wrote into ``folder`` (everything but our record and temporary files)."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.name != BLOBS and not path.name.startswith("."))


def _records(folder: Path) -> dict[str, Any]:
    try:
        records = json.loads((folder / BLOBS).read_text())
        return records if isinstance(records, dict) else {}
    except (OSError, ValueError):
        return {}  # no record (or an unreadable one): every blob in the folder is unrecorded


def check_blobs(folder: Path, say: Callable[[str], None], full: bool = False) -> int:
    """Delete every blob in ``folder`` that is not recorded in blobs.json or does not match its record; returns
    how many. ``full``: hash every blob, whatever its mtime."""
    if not folder.is_dir():
        return 0
    records, removed, touched = _records(folder), 0, False
    for blob in _blob_files(folder):
        try:
            if not isinstance(records.get(blob.name), dict):
                raise CorruptEntry("not recorded: its writer stopped before recording it, or is still writing")
            mtime_ns = check_file(blob, records[blob.name], full)
            if mtime_ns is not None:
                records[blob.name]["mtime_ns"], touched = mtime_ns, True
        except (CorruptEntry, KeyError, TypeError) as error:
            say(f"openvino cache: compiled blob {blob} is not loaded ({error}); removing it, OpenVINO compiles again")
            blob.unlink(missing_ok=True)
            records.pop(blob.name, None)
            removed += 1
            touched = True
    if touched:
        write_json(folder / BLOBS, records, best_effort=True)
    return removed


def record_blobs(folder: Path) -> None:
    """Record every blob in ``folder`` as it is now: called right after OpenVINO compiled and wrote one. The others
    were checked just before (check_blobs): their records are kept as they are, so only the new blob is hashed."""
    records = _records(folder)

    def unchanged(blob: Path) -> bool:
        record, status = records.get(blob.name), blob.stat()
        return (isinstance(record, dict) and record.get("size") == status.st_size
                and record.get("mtime_ns") == status.st_mtime_ns)

    write_json(folder / BLOBS, {blob.name: records[blob.name] if unchanged(blob) else file_record(blob)
                                for blob in _blob_files(folder)}, best_effort=True)


def compile_entry(core, entry: Entry, precision: str, config: dict[str, Any], say: Callable[[str], None]):
    """(compiled model, whether it came from a cached blob) for ``entry`` at ``precision``."""
    folder = compiled_folder(entry.folder, precision)
    folder.mkdir(parents=True, exist_ok=True)
    check_blobs(folder, say)
    # compiled from the path (not a read_model object): OpenVINO then keys the blob by path and file info
    # instead of hashing every weight of the model, and skips reading the model when the blob is there
    compiled = core.compile_model(str(entry.xml), "CPU", {**config, "CACHE_DIR": str(folder)})
    loaded = bool(compiled.get_property("LOADED_FROM_CACHE"))
    if not loaded:
        record_blobs(folder)
    return compiled, loaded
