"""Retention: what keeps ``difflab serve``'s data folder from growing without end.

The server keeps every job's images so that a client can fetch them later, but a client that got its answer
rarely comes back after days. So, while the server runs (``sweep``, called by the worker between jobs: at start and
then every ``RetentionPolicy.every_s``):

1. a finished job (done, failed, cancelled) older than ``keep_days`` goes, with its images and idempotency key;
2. while the images take more than ``keep_bytes``, the oldest finished jobs go the same way;
3. an uploaded input (``inputs/``) that no remaining job names and that is older than ``keep_days`` goes: uploads
   are content-addressed and kept while any job, queued or finished, still uses them;
4. an image whose job row is gone (a crash between steps 1 and its files) goes.

A queued or running job is never touched, nor are its inputs or outputs. Rows go before files, so a crash in
between leaves files without rows (swept next time), never a row whose image is missing. The sweep runs in the
worker's thread, between jobs, so it never races the worker writing a job's images.

``discard_refused_uploads``: a request that stored uploads and was then refused (A1111 img2img with a good init
image and a bad field) removes the files it wrote, unless a job uses them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable, Optional

from difflab.serve.queue import JobStore

log = logging.getLogger("difflab.serve")

DEFAULT_KEEP_DAYS = 30.0  # a month: long enough to come back for an image, short enough to bound the folder
DEFAULT_KEEP_GB = 10.0  # about 7,000 SDXL PNGs (1.5 MB each) or 30,000 SD 1.5 ones
DEFAULT_EVERY_S = 600.0  # a sweep lists the images folder: every 10 minutes is plenty and costs nothing
_JOB_IMAGE = re.compile(r"^([0-9a-f]{32})-.+\.png$")  # the worker names a job's images "<job id>-..." (_finish)
_UPLOAD_CLOCK_SLACK_S = 1.0  # file times are coarser than time.time(): a file just written may look this much older


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float = DEFAULT_KEEP_DAYS  # 0: keep jobs and inputs whatever their age
    keep_bytes: int = int(DEFAULT_KEEP_GB * 1024**3)  # images' total size; 0: no cap
    every_s: float = DEFAULT_EVERY_S

    def __post_init__(self) -> None:
        if not 0 <= self.keep_days <= 36500:
            raise ValueError(f"keep_days: must be between 0 (keep forever) and 36500; got {self.keep_days}")
        if self.keep_bytes < 0:
            raise ValueError(f"keep_gb: must be >= 0 (0 = no size cap); got {self.keep_bytes / 1024**3:g}")
        if self.every_s <= 0:
            raise ValueError(f"retention every_s: must be > 0; got {self.every_s}")


@dataclass(frozen=True)
class Swept:
    jobs: int = 0
    images: int = 0
    inputs: int = 0
    bytes: int = 0


def sweep(store: JobStore, images_dir: Path, inputs_dir: Path, policy: RetentionPolicy,
          now: Optional[float] = None) -> Swept:
    """Apply ``policy`` once (see the module docstring); what was removed."""
    now = time.time() if now is None else now
    cutoff = now - policy.keep_days * 86400 if policy.keep_days else None
    images = {path.name: path.stat().st_size for path in _files(images_dir)}

    # 1. and 2. which finished jobs go: too old, then the oldest while the images are over the cap
    finished = store.finished_jobs()  # oldest first
    doomed = [job for job in finished if cutoff is not None and (job.finished or job.created) < cutoff]
    if policy.keep_bytes:
        total = sum(images.values()) - sum(_job_bytes(job, images) for job in doomed)
        chosen = {job.id for job in doomed}
        for job in finished:
            if total <= policy.keep_bytes:
                break
            if job.id not in chosen:
                doomed.append(job)
                total -= _job_bytes(job, images)
    store.delete_finished([job.id for job in doomed])  # rows first: a crash leaves files, swept next time

    # 4. these jobs' images, and any other image whose job row is gone (what a crash left behind)
    rows = store.job_ids()
    named = {image["file"] for job in doomed for image in job.images}
    removed_images = removed_bytes = 0
    for name, size in images.items():
        match = _JOB_IMAGE.match(name)
        if (name in named or (match and match.group(1) not in rows)) and _remove(images_dir / name):
            removed_images, removed_bytes = removed_images + 1, removed_bytes + size

    # 3. inputs no job uses, once old
    removed_inputs = 0
    if cutoff is not None:
        used = referenced_names(store)
        for path in _files(inputs_dir):
            stat = path.stat()
            if path.name not in used and stat.st_mtime < cutoff and _remove(path):
                removed_inputs, removed_bytes = removed_inputs + 1, removed_bytes + stat.st_size
    swept = Swept(len(doomed), removed_images, removed_inputs, removed_bytes)
    if swept != Swept():
        log.info("retention: removed %d job(s), %d image(s), %d input(s), %.1f MB", swept.jobs, swept.images,
                 swept.inputs, swept.bytes / 1e6)
    return swept


def discard_refused_uploads(store: JobStore, inputs_dir: Path, names: Iterable[str], since: float) -> int:
    """Remove the inputs a refused request stored: each of ``names`` written at or after ``since`` (the request's
    start; an older file was someone else's upload of the same image) that no job uses. Returns how many."""
    used = None
    removed = 0
    for name in names:
        path = Path(inputs_dir) / name
        try:
            if path.stat().st_mtime < since - _UPLOAD_CLOCK_SLACK_S:
                continue
        except FileNotFoundError:
            continue
        used = referenced_names(store) if used is None else used
        if name not in used and _remove(path):
            removed += 1
    return removed


def referenced_names(store: JobStore) -> set[str]:
    """The file names that any job's request mentions (init_image, mask, controls' images hold server paths)."""
    names: set[str] = set()
    for request in store.requests():
        _collect_names(request, names)
    return names


def _collect_names(value: Any, names: set[str]) -> None:
    if isinstance(value, str):
        if 0 < len(value) < 4096:
            names.add(PurePath(value).name)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_names(item, names)


def _job_bytes(job, images: dict[str, int]) -> int:
    return sum(images.get(image["file"], 0) for image in job.images)


def _files(folder: Path) -> list[Path]:
    try:
        return [path for path in Path(folder).iterdir() if path.is_file() and not path.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as error:  # a file the server cannot remove is reported, not fatal: the sweep goes on
        log.warning("retention: cannot remove %s: %s", path, error)
        return False
