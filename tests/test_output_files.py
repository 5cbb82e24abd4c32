"""difflab.output_files: A1111 numbering that never replaces a file (also with two processes writing one folder at
once), the output check made before any work, and the rescue folder when a write fails after the work."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unwritable import unwritable_folder
from difflab.output_files import (
    OutputWriteError, image_name, next_number, output_problem, save_named_files, save_new_images, write_new_image,
)


def test_names_follow_a1111_and_continue_from_the_highest_number(tmp_path: Path) -> None:
    assert image_name(12, 1234) == "00012-1234.png" and image_name(3, 7, "grid") == "grid-0003-7.png"
    assert next_number(tmp_path / "missing") == 0
    for name in ("00007-1.png", "00002-5.png", "grid-0040-1.png", "notes.txt", "0000000000-00.png", "x-00099.png"):
        (tmp_path / name).write_bytes(b"old")
    # the highest leading number (7; difflab's old 0000000000-00.png counts as 0), other names ignored, as A1111
    assert next_number(tmp_path) == 8 and next_number(tmp_path, "grid") == 41
    paths = save_new_images(tmp_path, [(5, b"a"), (6, b"b")])
    assert [p.name for p in paths] == ["00008-5.png", "00009-6.png"]
    assert [p.read_bytes() for p in paths] == [b"a", b"b"]
    assert all((tmp_path / n).read_bytes() == b"old" for n in ("00007-1.png", "00002-5.png", "0000000000-00.png"))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def _writer(folder: str, worker: int, count: int, barrier) -> None:
    barrier.wait()  # all processes start writing at the same moment
    for i in range(count):
        write_new_image(Path(folder), 0, f"worker {worker} image {i}".encode() * 200)


def test_two_processes_writing_one_folder_keep_every_image(tmp_path: Path) -> None:
    """Four real processes, 25 images each, all with seed 0 (the names differ only by their number): every image
    is on disk, whole, under its own number. Scanning for the next number and then replacing (the obvious way)
    loses images here; an exclusive claim makes the loser take the next number."""
    workers, count = 4, 25
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [context.Process(target=_writer, args=(str(tmp_path), w, count, barrier)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == [image_name(n, 0) for n in range(workers * count)]
    contents = {f.read_bytes() for f in files}
    assert contents == {f"worker {w} image {i}".encode() * 200 for w in range(workers) for i in range(count)}


def test_output_problems_are_found_without_creating_anything(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file.png"
    a_file.write_bytes(b"x")
    assert output_problem(tmp_path / "new" / "deeper") is None and not (tmp_path / "new").exists()
    assert output_problem(a_file) == "is a file, not a folder"
    assert "is a file, so the folder cannot be created" in output_problem(a_file / "sub")
    assert output_problem(tmp_path, kind="file") == "is a folder, not a file"
    assert output_problem(tmp_path / "new" / "figure.png", kind="file") is None
    unwritable = unwritable_folder(tmp_path)
    assert "cannot be written" in output_problem(unwritable)
    assert "where it would be created" in output_problem(unwritable / "new-folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file.png", "read-only"]


def test_a_folder_replaced_by_a_file_mid_run_sends_the_rest_to_the_rescue_folder(tmp_path: Path, monkeypatch) -> None:
    rescue = tmp_path / "rescue"
    monkeypatch.setenv("DIFFLAB_RESCUE_DIR", str(rescue))
    out = tmp_path / "out"
    [first] = save_new_images(out, [(1, b"first")])
    shutil.rmtree(out)  # the folder goes away while the next images are being made ...
    out.write_bytes(b"a file now")  # ... and a file takes its name
    with pytest.raises(OutputWriteError) as caught:
        save_new_images(out, [(2, b"second"), (3, b"third")])
    error = caught.value
    assert error.written == [] and [p.read_bytes() for p in error.rescued] == [b"second", b"third"]
    assert error.rescue_folder.parent == rescue and [p.name for p in error.rescued] == ["00000-2.png", "00001-3.png"]
    message = error.describe("--out")
    assert message.startswith(f"--out {str(out)!r}: could not write") and str(error.rescue_folder) in message
    # fixed-name reports are rescued the same way
    with pytest.raises(OutputWriteError) as caught:
        save_named_files(out / "sweep", {"grid.png": b"g", "table.md": b"t"})
    assert sorted(p.name for p in caught.value.rescued) == ["grid.png", "table.md"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 256 kB file system, to fill up; needs the right to mount (root in a container that allows it)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_keeps_the_images_that_fit_and_rescues_the_rest(tiny_tmpfs: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("DIFFLAB_RESCUE_DIR", str(tmp_path / "rescue"))
    images = [(seed, os.urandom(100_000)) for seed in range(4)]  # incompressible, 4 x 100 kB on 256 kB
    with pytest.raises(OutputWriteError) as caught:
        save_new_images(tiny_tiny := tiny_tmpfs / "out", images)
    error = caught.value
    assert "No space left on device" in error.reason
    assert len(error.written) + len(error.rescued) == 4 and error.written and error.rescued
    kept = [p.read_bytes() for p in (*error.written, *error.rescued)]
    assert kept == [data for _, data in images], "every image kept, whole, in order"
    assert not list(tiny_tiny.glob(".*.tmp")), "the failed write left no partial file"
