"""Where outputs go: image files that never replace one another, a check of the output location before any work,
and a rescue folder when a write still fails after the work is done. Standard library only, so every layer
(``core`` labs, the engine, the command line) can use it.

Images are named the way AUTOMATIC1111's webui names them (``modules/images.py``: ``get_next_sequence_number``
and ``save_image``): a 5-digit counter that continues from the highest number already in the folder, then the
seed, ``00012-1234.png``; a grid is ``grid-0003-1234.png``. A file is created exclusively (a hard link of a fully
written temporary file, which fails if the name exists), so two processes writing one folder at once both keep
their images: the one that loses a name takes the next number.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from difflab.io.atomic import atomic_write_bytes, write_new_file

RESCUE_DIR_ENV = "DIFFLAB_RESCUE_DIR"
# names whose first dash-separated part is a number count for the sequence, as in A1111 ("00012-1234.png");
# other files ("grid-0003-1.png", "notes.txt") are ignored
_LEADING_NUMBER = re.compile(r"^(\d+)(?:-|\.|$)")


def image_name(number: int, seed: int, basename: str = "") -> str:
    """The one naming scheme of generated images: ``00012-1234.png``, or ``grid-0012-1234.png`` with a basename
    (A1111 gives prefixed names a 4-digit counter)."""
    if basename:
        return f"{basename}-{number:04d}-{seed}.png"
    return f"{number:05d}-{seed}.png"


def next_number(folder: Path, basename: str = "") -> int:
    """One more than the highest counter in ``folder`` (0 for an empty or missing folder), as A1111 counts."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix):
            match = _LEADING_NUMBER.match(name[len(prefix):])
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def write_new_image(folder: Path, seed: int, data: bytes, basename: str = "") -> Path:
    """Write ``data`` under the next free number and return its path; never replaces a file. The bytes go to a
    temporary file first, so a reader never sees half an image and a failed write leaves nothing behind."""
    return write_new_file(folder, data, _image_names(Path(folder), seed, basename))


def _image_names(folder: Path, seed: int, basename: str) -> Iterator[str]:
    """The next free number's name, then, each time another process took it first, the next one."""
    number = next_number(folder, basename)
    while True:
        yield image_name(number, seed, basename)
        number = max(number + 1, next_number(folder, basename))


@dataclass(eq=False)  # exceptions stay hashable
class OutputWriteError(Exception):
    """A write into the output folder failed after the work was done. ``written`` are the files that made it there,
    ``rescued`` the ones saved in ``rescue_folder`` instead (empty, with ``rescue_error``, if that failed too)."""

    folder: Path
    file: str  # the file being written when the folder failed
    reason: str
    written: list[Path] = field(default_factory=list)
    rescued: list[Path] = field(default_factory=list)
    rescue_folder: Optional[Path] = None
    rescue_error: Optional[str] = None
    pending: int = 0  # files that had still to be written when the folder failed

    def describe(self, option: str = "--out") -> str:
        head = f"{option} {str(self.folder)!r}: could not write {self.file} ({self.reason})"
        if self.rescued:
            return (f"{head}; {len(self.rescued)} file(s) saved in {self.rescue_folder} instead"
                    + (f", {len(self.written)} written to {self.folder}" if self.written else ""))
        return f"{head}; {self.pending} file(s) could not be saved anywhere ({self.rescue_error})"

    def __str__(self) -> str:
        return self.describe()


def rescue_folder_candidates() -> list[Path]:
    """Where outputs go when their folder fails: $DIFFLAB_RESCUE_DIR, else ~/.cache/difflab/rescued (or under
    $XDG_CACHE_HOME), else the system temporary folder; a new subfolder per rescue, so nothing is replaced."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    if os.environ.get(RESCUE_DIR_ENV):
        return [Path(os.environ[RESCUE_DIR_ENV]) / stamp]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [cache / "difflab" / "rescued" / stamp, Path(tempfile.gettempdir()) / "difflab-rescued" / stamp]


def _rescue(write, items: Sequence, error: OutputWriteError) -> OutputWriteError:
    """Write ``items`` with ``write(folder, item)`` into the first rescue folder that works."""
    problems = []
    for folder in rescue_folder_candidates():
        try:
            error.rescued = [write(folder, item) for item in items]
            error.rescue_folder = folder
            return error
        except OSError as rescue_error:
            problems.append(f"{folder}: {rescue_error.strerror or rescue_error}")
    error.rescue_error = "; ".join(problems)
    return error


def save_new_images(folder: Path, items: Iterable[tuple[int, bytes]], basename: str = "") -> list[Path]:
    """Write each ``(seed, png)`` under the next free number in ``folder``. If the folder fails part way (disk
    full, folder removed), the images not yet written go to a rescue folder and :class:`OutputWriteError` says
    where; the ones already written stay where they are."""
    folder = Path(folder)
    items = list(items)
    written: list[Path] = []
    for position, (seed, data) in enumerate(items):
        try:
            written.append(write_new_image(folder, seed, data, basename))
        except OSError as failure:
            error = OutputWriteError(folder, f"image {position + 1} of {len(items)} (seed {seed})",
                                     failure.strerror or str(failure), written, pending=len(items) - position)
            raise _rescue(lambda target, item: write_new_image(target, item[0], item[1], basename),
                          items[position:], error) from failure
    return written


def save_named_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write fixed-name files (reports, grids of a measurement) into ``folder``, replacing earlier ones, with the
    same rescue as :func:`save_new_images` when the folder fails part way."""
    folder = Path(folder)
    written: list[Path] = []
    names = list(files)
    for position, name in enumerate(names):
        try:
            atomic_write_bytes(folder / name, files[name])
            written.append(folder / name)
        except OSError as failure:
            error = OutputWriteError(folder, name, failure.strerror or str(failure), written,
                                     pending=len(names) - position)

            def write(target: Path, item: str) -> Path:
                atomic_write_bytes(target / item, files[item])
                return target / item

            raise _rescue(write, names[position:], error) from failure
    return written


def output_problem(path: Path, kind: str = "folder") -> Optional[str]:
    """Why ``path`` cannot take output (``kind`` "folder" or "file"), or None. Checked before any work, without
    creating anything: the nearest existing folder on the way must be a folder we can create files in."""
    path = Path(path).expanduser()
    if kind == "folder" and path.exists() and not path.is_dir():
        return "is a file, not a folder"
    if kind == "file" and path.is_dir():
        return "is a folder, not a file"
    existing = path if kind == "folder" else path.parent
    while not existing.exists():
        if existing.is_symlink():
            return f"{str(existing)!r} is a broken link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, so the folder cannot be created"
    try:  # os.access says yes to root on a read-only mount; creating a file is the real test
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".difflab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == path else f" ({str(existing)!r}, where it would be created)"
        return f"cannot be written{where}: {error.strerror or error}"
    return None
