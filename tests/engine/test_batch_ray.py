"""`difflab batch --ray`: the local batch's folder, drawn by Ray actors; resume after a killed driver, retries after
a killed worker. The cluster tests start a real local Ray cluster (2 CPUs) and run only with ``-m slow`` (their own
CI step, after `scripts/setup.sh test,ray`); the checks that need no cluster run in the default suite."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.engine.batch import MANIFEST_FILE, BatchError, ImageFinished, plan_batch
from tests.engine.test_batch import DEFAULTS, LINES, TOTAL, batch, counts, manifest, write_jsonl

# the fault tests need a batch long enough to be killed in the middle: 12 lines of 2 images, 8 steps each
LONG_LINES = [(f"a {colour} {shape}", {"seed": 1000 + 10 * number, "n": 2, "steps": 8})
              for number, (colour, shape) in enumerate((c, s) for c in ("red", "green", "blue", "yellow")
                                                       for s in ("circle", "square", "triangle"))]
LONG_TOTAL = 2 * len(LONG_LINES)


def keys(folder: Path) -> list[tuple[int, int]]:
    return [(entry["line"], entry["index"]) for entry in manifest(folder)]


def assert_same_images(folder: Path, expected: Path) -> int:
    """Same file names, each image within 1/255 of the expected one; returns how many are byte-identical."""
    names = sorted(p.name for p in expected.glob("0*.png"))
    assert sorted(p.name for p in folder.glob("0*.png")) == names
    identical = 0
    for name in names:
        with Image.open(folder / name) as got, Image.open(expected / name) as want:
            difference = np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int)).max()
        assert difference <= 1, f"{name}: {difference}/255 from the local run"
        identical += (folder / name).read_bytes() == (expected / name).read_bytes()
    return identical


def need_slow(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("needs the ray extra and a local Ray cluster: run with -m slow (.ci/run's Ray step)")


# 1. Without a cluster (default suite)

def test_ray_without_the_extra_names_it_and_writes_nothing(tiny_sd_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    result = batch(write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "out", tiny_sd_folder, "--ray")
    assert result.exit_code == 2, result.output
    assert "--ray needs the 'ray' extra" in result.output and "difflab[ray]" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_ray_options_need_ray(tiny_sd_folder: Path, tmp_path: Path) -> None:
    result = batch(write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "out", tiny_sd_folder, "--ray-workers", "2")
    assert result.exit_code == 2 and "--ray-workers needs --ray" in result.output, result.output
    result = batch(write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "out", tiny_sd_folder, "--ray",
                   "--ray-workers", "0")
    assert result.exit_code == 2 and "--ray-workers" in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("address, says", [
    ("127.0.0.1:{free_port}", "no Ray cluster answers there"),  # nothing listens: refused at once
    # unroutable: the connect timeout (3 s), or where a proxy answers every address, Ray's join cut to 3 attempts
    ("10.255.255.1:6379", "--ray-address '10.255.255.1:6379': "),
    ("head-node", "expected HOST:PORT"),
])
def test_an_unreachable_address_fails_in_seconds_naming_it(address: str, says: str, tiny_sd_folder: Path,
                                                           tmp_path: Path, request: pytest.FixtureRequest) -> None:
    need_slow(request)
    ray = pytest.importorskip("ray")
    from difflab.engine.batch_ray import cluster

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    address = address.format(free_port=free_port)
    started = time.monotonic()
    with pytest.raises(BatchError, match=re.escape(says)):  # joining alone: Ray by itself retries for 20 s and more
        with cluster(ray, address):
            pass
    assert time.monotonic() - started < 10
    assert not ray.is_initialized()
    result = batch(write_jsonl(tmp_path / "prompts.jsonl"), tmp_path / "out", tiny_sd_folder, "--ray",
                   "--ray-address", address)
    assert result.exit_code == 2, result.output
    assert f"--ray-address {address!r}" in result.output and says in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# 2. On a local cluster (-m slow)

@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest):
    """A local cluster of 2 CPUs in this process, shared by the module; the CLI joins it (ray.is_initialized)."""
    need_slow(request)
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_runs(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(prompt file, folder of the uninterrupted local batch) for the short and the long prompt file."""
    root = tmp_path_factory.mktemp("batch-ray-reference")
    runs = {}
    for name, lines in (("short", LINES), ("long", LONG_LINES)):
        prompts = write_jsonl(root / f"{name}.jsonl", lines)
        result = batch(prompts, root / name, tiny_sd_folder)
        assert result.exit_code == 0, result.output
        runs[name] = (prompts, root / name)
    return runs


@pytest.mark.slow
def test_ray_batch_writes_the_local_batch(ray_cluster, local_runs, tiny_sd_folder: Path, tmp_path: Path) -> None:
    """Same names, batch.json, manifest (but for the timings) and contact sheet; images within 1/255."""
    prompts, expected = local_runs["short"]
    out = tmp_path / "out"
    result = batch(prompts, out, tiny_sd_folder, "--ray", "--ray-workers", "2")
    assert result.exit_code == 0, result.output
    assert f"{TOTAL} images generated, 0 already finished" in result.output
    identical = assert_same_images(out, expected)
    print(f"{identical} of {TOTAL} images byte-identical to the local run")
    assert (out / "batch.json").read_bytes() == (expected / "batch.json").read_bytes()
    without_time = lambda folder: [{k: v for k, v in e.items() if k != "seconds"} for e in manifest(folder)]  # noqa: E731
    if identical == TOTAL:  # same bytes: the manifests (hashes included) and the sheets are the local ones exactly
        assert without_time(out) == without_time(expected)
        assert (out / "contact-sheet.png").read_bytes() == (expected / "contact-sheet.png").read_bytes()
    else:
        assert [{k: v for k, v in e.items() if k != "sha256"} for e in without_time(out)] == \
            [{k: v for k, v in e.items() if k != "sha256"} for e in without_time(expected)]
    rerun = batch(prompts, out, tiny_sd_folder, "--ray", "--ray-workers", "2")
    assert rerun.exit_code == 0 and f"0 images generated, {TOTAL} already finished" in rerun.output, rerun.output


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_is_refused_before_writing(ray_cluster, local_runs, tiny_sd_folder: Path,
                                                                     tmp_path: Path) -> None:
    prompts, _ = local_runs["short"]
    result = batch(prompts, tmp_path / "out", tiny_sd_folder, "--ray", "--ray-workers", "3")
    assert result.exit_code == 2, result.output
    assert "--ray-workers must be 1 to 2" in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_workers_that_cannot_import_the_engine_get_a_clear_error(ray_cluster) -> None:
    """The probe runs on every node of the real cluster; a module missing there is named with the extra."""
    from difflab.engine.batch_ray import check_workers

    check_workers(ray_cluster)  # this machine's workers have everything
    with pytest.raises(BatchError, match=r"cannot import difflab_no_such_module .*difflab\[ray\]"):
        check_workers(ray_cluster, ("torch", "difflab_no_such_module"))


def _wait_for_manifest(out: Path, process: subprocess.Popen, deadline: float) -> None:
    while not ((out / MANIFEST_FILE).is_file() and (out / MANIFEST_FILE).stat().st_size > 0):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the batch wrote no manifest entry in time"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_driver_resumes_with_every_image_once(ray_cluster, local_runs, tiny_sd_folder: Path,
                                                       tmp_path: Path) -> None:
    """SIGKILL to `difflab batch --ray` (its own local cluster) after its first image, then the same command."""
    prompts, expected = local_runs["long"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "difflab.cli", "batch", str(prompts), "-o", str(out), "--model",
               str(tiny_sd_folder), *DEFAULTS, "--ray", "--ray-workers", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # its own session: the kill takes the driver's whole local cluster with it (Ray's agents outlive a lone driver)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        _wait_for_manifest(out, process, time.monotonic() + 180)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    finished_before = len((out / MANIFEST_FILE).read_text().splitlines())
    print(f"driver killed with {finished_before} of {LONG_TOTAL} images in the manifest")
    assert 1 <= finished_before < LONG_TOTAL, "the kill came after the batch had finished: nothing to resume"

    result = batch(prompts, out, tiny_sd_folder, "--ray", "--ray-workers", "2")  # the same command (this cluster)
    assert result.exit_code == 0, result.output
    generated, already = counts(result.output)
    assert generated + already == LONG_TOTAL and already >= finished_before
    assert len(keys(out)) == len(set(keys(out))) == LONG_TOTAL  # every image exactly once
    assert keys(out) == keys(expected)
    assert_same_images(out, expected)
    assert not list(out.glob(".*.tmp")) and (out / "contact-sheet.png").is_file()


def _map_workers() -> set[int]:
    """Process ids of Ray Data's actors started under this process (the module's cluster)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                continue
            pid = int(entry.name)
            while pid > 1:  # an ancestor must be this process: never touch another user's Ray
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == os.getpid():
                    found.add(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return found


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(ray_cluster, local_runs, tiny_sd_folder: Path,
                                                                   tmp_path: Path) -> None:
    """SIGKILL to one of the two actors once the first image is written: Ray restarts it and retries its line."""
    from difflab.engine.batch_ray import RayOptions, run_batch_ray

    prompts, expected = local_runs["long"]
    plan = plan_batch(prompts, dict(zip(("steps", "width", "height", "scheduler"), DEFAULTS[1::2]),
                                    model=str(tiny_sd_folder)))
    out = tmp_path / "out"
    killed, seen = None, set()
    events = []
    for event in run_batch_ray(plan, out, RayOptions(workers=2)):
        events.append(event)
        seen |= _map_workers()
        if killed is None and isinstance(event, ImageFinished):
            workers = _map_workers()
            assert len(workers) == 2, workers
            killed = min(workers)
            os.kill(killed, signal.SIGKILL)
            written_at_kill = len(events)
    assert killed is not None
    print(f"killed actor {killed} after {written_at_kill} images; actors seen: {sorted(seen)}")
    assert len(seen - {killed}) >= 2, "no restarted actor was seen"
    made = [event.entry for event in events if isinstance(event, ImageFinished) and not event.skipped]
    assert len(made) == LONG_TOTAL and written_at_kill < LONG_TOTAL
    assert len(keys(out)) == len(set(keys(out))) == LONG_TOTAL
    assert keys(out) == keys(expected)
    assert_same_images(out, expected)
    assert json.loads((out / "batch.json").read_text())["total_images"] == LONG_TOTAL
