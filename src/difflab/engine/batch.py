"""Prompt files in, resumable batch runs out.

A prompt file is JSONL (one JSON object per line) or CSV (a header of field names, one row per request); the fields
are GenerationRequest's, and the command line gives defaults that a line overrides. Every line is validated before
anything is generated or written, so a typo on line 9,000 fails in a second, not after eight hours.

An output folder holds one batch:

    batch.json          the validated requests and their fingerprint (which batch this folder belongs to)
    manifest.jsonl      one line per finished image: line, index, seed, path, sha256, seconds
    00012-03-1234.png   line 12's image 3, seed 1234: names are fixed by (line, index), so a rerun overwrites
    contact-sheet.png   every image, captioned with its line, index and seed

Crash safety, in order of the writes: an image is written to a temporary file and renamed over its name (never
half a PNG under a real name), *then* its manifest line is appended with the file's SHA-256. On resume an image
counts as finished only if its manifest line is whole and the file on disk has that hash; anything else (no line,
a torn last line, a file changed since) is generated again. The manifest is JSONL rather than SQLite because one
appended line per image is the whole job: readable with ``cat``/``jq``, and a torn last line is detectable and
dropped; SQLite would add a schema and a binary file for no extra guarantee here.

Each line runs as its own request (n images, image i seeded seed + i), and an unfinished line is re-run whole:
CPU kernels are not batch-invariant, so regenerating only its missing image alone could differ by 1/255 from an
uninterrupted run, and re-running the same layout is what makes resumed files byte-equal to uninterrupted ones.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from difflab.engine.request import GenerationRequest, RequestError, build_request

BATCH_FILE = "batch.json"
MANIFEST_FILE = "manifest.jsonl"
CONTACT_SHEET = "contact-sheet.png"
LOCK_FILE = ".batch.lock"
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MAX_REPORTED_ERRORS = 20  # a file with 5,000 bad lines gets the first 20 and a count, not 5,000 lines
SHEET_PAGE = 256  # images per contact sheet page: beyond that one PNG gets unwieldy
SHEET_TILE = 128  # thumbnail side on the sheet: small images scale up (nearest) so captions fit, big ones down


class BatchError(ValueError):
    """A prompt file or output folder that cannot be run; the message names the line and field."""


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based line of the prompt file where this request starts: errors and file names use it
    request: GenerationRequest

    def file_name(self, index: int) -> str:
        return f"{self.line:05d}-{index:02d}-{self.request.seed + index}.png"


@dataclass(frozen=True)
class BatchPlan:
    source: Path
    lines: tuple[BatchLine, ...]
    fingerprint: str  # SHA-256 of the requests, input hashes and backend: which batch a folder holds

    @property
    def total_images(self) -> int:
        return sum(item.request.n for item in self.lines)


# 1. Reading and validating the prompt file

def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, raw fields) per request in the file; raw fields are a dict or a problem message string."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BatchError(f"prompt file {str(path)!r} must end in .jsonl or .csv")
    if not path.is_file():
        raise BatchError(f"prompt file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often save CSV with a BOM
    except UnicodeDecodeError as error:
        raise BatchError(f"prompt file {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return _jsonl_rows(text) if kind == "jsonl" else _csv_rows(text)


def _jsonl_rows(text: str) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((number, f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        rows.append((number, value if isinstance(value, dict) else "must be a JSON object of request fields"))
    return rows


def _csv_rows(text: str) -> list[tuple[int, Any]]:
    import io

    reader = csv.reader(io.StringIO(text, newline=""))
    header: Optional[list[str]] = None
    rows: list[tuple[int, Any]] = []
    while True:
        start = reader.line_num + 1  # the row's first line (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows.append((start, f"not valid CSV ({error})"))
            break
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = [cell.strip() for cell in cells]
            unknown = [name for name in header if name not in GenerationRequest.model_fields]
            if unknown:
                raise BatchError(f"line {start}: header: {', '.join(map(repr, unknown))} "
                                 f"{'is not a field' if len(unknown) == 1 else 'are not fields'}; "
                                 f"fields: {', '.join(GenerationRequest.model_fields)}")
            continue
        if len(cells) > len(header):
            rows.append((start, f"has {len(cells)} cells but the header has {len(header)} columns"))
            continue
        # an empty cell means "not given": the command-line default (or the model's) applies
        rows.append((start, {name: cell for name, cell in zip(header, cells) if cell.strip()}))
    return rows


def plan_batch(path: str | Path, defaults: Optional[dict[str, Any]] = None, *, backend=None,
               compile: bool = False) -> BatchPlan:
    """Validate every line of the prompt file (with ``defaults`` under each line), with every check a single
    ``generate`` makes before loading weights; raise BatchError listing the bad lines, each with its number and
    field, before anything runs. ``backend`` (engine.backends.Backend, torch when None) and ``compile``
    (torch.compile) are how the run draws: part of the fingerprint, as they change the images."""
    from difflab.engine.outputs import model_hash

    path = Path(path)
    defaults = {key: value for key, value in (defaults or {}).items() if value is not None}
    try:  # a bad option is one error about the option, not one per line that inherits it
        build_request(**{"prompt": "-", **defaults})
    except RequestError as error:
        raise BatchError(f"command-line options: {error}") from None
    problems: list[str] = []
    lines: list[BatchLine] = []
    models: dict[tuple[str, bool], Any] = {}  # (name, allow_unsafe_pickle) -> ResolvedModel, or why it failed
    for number, fields in read_rows(path):
        if isinstance(fields, str):
            problems.append(f"line {number}: {fields}")
            continue
        try:
            request = build_request(**{**defaults, **fields})
            _preflight(request, models)
        except ValueError as error:  # RequestError, and the engine's own checks (each names its field)
            problems.append(f"line {number}: {error}")
            continue
        lines.append(BatchLine(number, request))
    if problems:
        shown = problems[:MAX_REPORTED_ERRORS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more bad lines")
        raise BatchError(f"{path.name}: " + "\n".join(shown))
    if not lines:
        raise BatchError(f"{path.name}: no requests (the file has no non-empty lines)")
    # the fingerprint covers what the images depend on beyond the request text: the model weights, LoRA files,
    # init images and masks; a folder resumed after any of them changed would mix two different batches
    inputs = {name: model_hash(model.path) for (name, _), model in models.items()}
    for item in lines:
        inputs.update(_input_hashes(item.request))
    identity: dict[str, Any] = {"requests": [[item.line, item.request.model_dump()] for item in lines],
                                "inputs": inputs}
    # and how they are drawn: OpenVINO's images differ from PyTorch's (up to 2/255), bf16's from f32's, compiled
    # U-Nets' from eager ones (up to 1/255), so resuming with another of them would mix two batches in one folder.
    # Left out for the default (torch, eager): folders written before backends existed still resume
    if (backend is not None and not backend.is_torch) or compile:
        identity["drawn_with"] = {"backend": backend.name if backend is not None else "torch",
                                  "precision": backend.precision if backend is not None else "f32",
                                  "compile": compile}
    canonical = json.dumps(identity, sort_keys=True)
    return BatchPlan(path, tuple(lines), hashlib.sha256(canonical.encode()).hexdigest())


def _preflight(request: GenerationRequest, models: dict) -> None:
    """The checks that need the model: it resolves, its family takes the sampler, negative prompt and mode
    settings, and the LoRA files exist. ValueError naming the field otherwise."""
    from difflab.engine.lora import resolve_all
    from difflab.engine.modes import check_settings
    from difflab.engine.pipeline import FAMILIES_WITH_NEGATIVE_PROMPT, Settings
    from difflab.engine.registry import check_scheduler_fits, resolve_model

    key = (request.model, request.allow_unsafe_pickle)
    if key not in models:
        try:
            models[key] = resolve_model(*key)
        except ValueError as error:
            models[key] = f"model: {error}"
    model = models[key]
    if isinstance(model, str):
        raise ValueError(model)
    settings = Settings.of(request, model)
    check_scheduler_fits(model, settings.scheduler)
    check_settings(settings)
    if request.negative_prompt and model.family not in FAMILIES_WITH_NEGATIVE_PROMPT:
        raise ValueError(f"negative_prompt: the {model.family} family has no negative prompt")
    resolve_all(request.loras)


def _input_hashes(request: GenerationRequest) -> dict[str, str]:
    from difflab.engine.lora import lora_hash, resolve_all
    from difflab.engine.modes import file_sha256

    hashes = {f"lora {lora.file}": lora_hash(lora.file) for lora in resolve_all(request.loras) if lora.file.is_file()}
    for name in ("init_image", "mask"):
        if getattr(request, name) is not None:
            hashes[f"{name} {getattr(request, name)}"] = file_sha256(getattr(request, name))
    return hashes


# 2. The output folder: which batch it holds, what is finished

def check_folder(plan: BatchPlan, folder: Path) -> None:
    """Refuse a folder that holds something else; read-only, so a refusal writes nothing."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise BatchError(f"output {str(folder)!r} is a file, not a folder")
    batch_file = folder / BATCH_FILE
    if not batch_file.is_file():
        # the lock file and a temporary file are what a run killed before writing batch.json leaves behind
        if any(entry.name != LOCK_FILE and not entry.name.endswith(".tmp") for entry in folder.iterdir()):
            raise BatchError(f"output folder {str(folder)!r} is not empty and holds no batch; use a new folder")
        return
    try:
        stored = json.loads(batch_file.read_text())
        fingerprint, source = stored["fingerprint"], stored.get("source", "?")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BatchError(f"{batch_file}: not a difflab batch record; use a new folder") from None
    if fingerprint != plan.fingerprint:
        raise BatchError(f"output folder {str(folder)!r} holds another batch (from {source}, "
                         f"{stored.get('total_images', '?')} images); this prompt file and options make a different "
                         "one: write it to a new folder, or rerun the original command to resume that one")


class FolderLock:
    """An exclusive lock on the output folder for one run: two runs writing one manifest would duplicate work.
    The OS releases it when the process dies (io.locks), so a kill -9 leaves no stale lock."""

    def __init__(self, folder: Path):
        from difflab.io.locks import ExclusiveFileLock

        self.path = folder / LOCK_FILE
        self._lock = ExclusiveFileLock(self.path)

    def __enter__(self) -> "FolderLock":
        from difflab.io.locks import LockHeld

        try:
            self._lock.acquire()
        except LockHeld:
            raise BatchError(f"another difflab batch is writing {str(self.path.parent)!r}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def finished_images(plan: BatchPlan, folder: Path) -> dict[tuple[int, int], dict]:
    """(line, index) -> manifest entry, for every image whose manifest line is whole and whose file still has the
    recorded hash. Call with the folder locked: it rewrites the manifest to exactly these entries (dropping a torn
    last line, duplicates and stale entries) and removes temporary files left by a killed run."""
    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.engine.modes import file_sha256

    for leftover in folder.glob(".*.tmp"):  # atomic_write_bytes' temporaries: a killed run's half-written files
        leftover.unlink(missing_ok=True)
    manifest = folder / MANIFEST_FILE
    raw = manifest.read_bytes() if manifest.is_file() else b""
    expected = {(item.line, index): item.file_name(index) for item in plan.lines for index in range(item.request.n)}
    done: dict[tuple[int, int], dict] = {}
    for text in raw.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(text)
            key = (entry["line"], entry["index"])
            if expected.get(key) == entry["path"] and file_sha256(str(folder / entry["path"])) == entry["sha256"]:
                done[key] = entry
            else:
                done.pop(key, None)  # a later entry for the same image that no longer holds supersedes
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            continue  # a torn line from a killed run, or a file that is gone: that image is made again
    clean = "".join(_manifest_line(entry) for entry in sorted(done.values(), key=lambda e: (e["line"], e["index"])))
    if clean.encode() != raw:
        atomic_write_bytes(manifest, clean.encode())
    return done


def _manifest_line(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"


def append_manifest(folder: Path, entry: dict) -> None:
    """One whole line per write with O_APPEND, then fsync: a crash leaves at worst a torn last line, which
    ``finished_images`` drops."""
    data = _manifest_line(entry).encode()
    fd = os.open(folder / MANIFEST_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {MANIFEST_FILE} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_batch_file(plan: BatchPlan, folder: Path) -> None:
    from difflab import __version__
    from difflab.core.checkpoint import atomic_write_bytes

    if (folder / BATCH_FILE).is_file():
        return
    payload = {"fingerprint": plan.fingerprint, "source": str(plan.source), "total_images": plan.total_images,
               "difflab": __version__,
               "lines": [{"line": item.line, "request": item.request.model_dump()} for item in plan.lines]}
    atomic_write_bytes(folder / BATCH_FILE, (json.dumps(payload, indent=1, ensure_ascii=False) + "\n").encode())


# 3. Running

@dataclass(frozen=True)
class LineStarted:
    line: int
    images: int  # how many of the line's images this run makes (the rest are already finished)


@dataclass(frozen=True)
class ImageFinished:
    entry: dict  # the manifest entry
    skipped: bool  # finished by an earlier run


def run_batch(plan: BatchPlan, folder: str | Path, cache, *,
              on_step: Optional[Callable[[int, int], None]] = None) -> Iterator[LineStarted | ImageFinished]:
    """Generate every image of the plan not already finished in ``folder``; yields progress events. The folder is
    checked (``check_folder``: a refusal writes nothing) before it is created, then locked for the run."""
    from difflab.engine.outputs import image_png
    from difflab.engine.pipeline import run

    folder = Path(folder)
    check_folder(plan, folder)
    with opened_folder(plan, folder) as done:
        current_model = None
        for item in plan.lines:
            request = item.request
            missing = [index for index in range(request.n) if (item.line, index) not in done]
            for index in range(request.n):
                if index not in missing:
                    yield ImageFinished(done[(item.line, index)], skipped=True)
            if not missing:
                continue
            if current_model not in (None, request.model):
                cache.clear()  # one model in memory at a time: a batch may mix SDXL and Flux
            current_model = request.model
            yield LineStarted(item.line, len(missing))
            result = run(request, cache, on_step=on_step)
            for index in missing:
                data = image_png(result, index, cache.placement)
                entry = save_image(folder, item, index, data, result.seeds[index], result.seconds / request.n)
                yield ImageFinished(entry, skipped=False)


@contextmanager
def opened_folder(plan: BatchPlan, folder: Path) -> Iterator[dict[tuple[int, int], dict]]:
    """The output folder created, locked for the run, ``batch.json`` written: yields what is already finished
    (``finished_images``). Call ``check_folder`` first, before anything slow, so a refusal comes early."""
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder):
        check_folder(plan, folder)  # again under the lock: another run may have started meanwhile
        write_batch_file(plan, folder)
        yield finished_images(plan, folder)


def save_image(folder: Path, item: BatchLine, index: int, data: bytes, seed: int, seconds: float) -> dict:
    """Image ``index`` of ``item`` written under its name, *then* its manifest line appended; returns the entry.
    ``seconds`` is this image's share of its line's time."""
    from difflab.core.checkpoint import atomic_write_bytes

    name = item.file_name(index)
    atomic_write_bytes(folder / name, data)
    entry = {"line": item.line, "index": index, "seed": seed, "path": name,
             "sha256": hashlib.sha256(data).hexdigest(), "seconds": round(seconds, 4)}
    append_manifest(folder, entry)
    return entry


# 4. The contact sheet

def write_contact_sheets(plan: BatchPlan, folder: str | Path) -> list[Path]:
    """Every image of the batch in plan order, captioned with line, index and seed; ``contact-sheet.png``, or
    ``contact-sheet-001.png``, ... when the batch has more than SHEET_PAGE images."""
    from PIL import Image

    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.viz.grid import make_grid, png_bytes

    folder = Path(folder)
    tiles = []
    for item in plan.lines:
        for index in range(item.request.n):
            with Image.open(folder / item.file_name(index)) as image:
                tiles.append(_captioned(image.convert("RGB"), f"line {item.line} #{index}",
                                        f"seed {item.request.seed + index}"))
    pages = [tiles[start:start + SHEET_PAGE] for start in range(0, len(tiles), SHEET_PAGE)]
    paths = []
    for number, page in enumerate(pages, start=1):
        name = CONTACT_SHEET if len(pages) == 1 else f"contact-sheet-{number:03d}.png"
        atomic_write_bytes(folder / name, png_bytes(make_grid(page, background=(255, 255, 255))))
        paths.append(folder / name)
    return paths


def _captioned(image, *lines: str):
    from PIL import Image, ImageDraw

    scale = SHEET_TILE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    thumbnail = image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    tile = Image.new("RGB", (SHEET_TILE, SHEET_TILE + 12 * len(lines) + 2), (255, 255, 255))
    tile.paste(thumbnail, ((SHEET_TILE - size[0]) // 2, (SHEET_TILE - size[1]) // 2))
    draw = ImageDraw.Draw(tile)
    for row, text in enumerate(lines):
        draw.text((2, SHEET_TILE + 1 + 12 * row), text, fill=(0, 0, 0))
    return tile
