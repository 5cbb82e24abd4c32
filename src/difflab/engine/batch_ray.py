"""``difflab batch --ray``: the same batch drawn by a pool of Ray actors, written by this process.

Ray Data carries the work: every unfinished line of the plan is one row of a dataset (its request as JSON and the
indices still missing), ``map_batches`` hands rows one at a time to a fixed pool of actors (``LineDrawer``), each
holding one ``PipelineCache``, and the actors return PNG bytes. One row is one pipeline call with the line's n
images, exactly the call the local batch makes (engine.batch: lines are never merged with each other, and an
unfinished line is re-run whole), so on the same device and thread count the images are the local run's.

Everything that touches the output folder stays here, in the driver, and is engine.batch's own code: the folder
check, the lock, ``batch.json``, resume from the manifest, each image written atomically before its manifest line
(``save_image``), the contact sheet. The actors never write files, so the folder needs to be visible to this
process only, and a killed actor or a killed driver can leave at worst what a killed local run leaves.

Faults: an actor killed mid-line is restarted by Ray and the line retried (``max_restarts``/``max_task_retries``,
bounded by RETRIES); a line's images reach the driver once, and the driver also drops a repeat of an image it
already wrote, so nothing is lost or written twice. A killed driver leaves a folder that the same command resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from difflab.engine.batch import BatchError, BatchPlan, ImageFinished, LineStarted, check_folder, opened_folder, save_image

EXTRA = "pip install 'difflab[ray]'"
ADDRESS_TIMEOUT_S = 3.0  # a TCP connect to the head node before ray.init
# ray.init's attempts (about 1 s each) at a port that answers but is not a Ray head (a proxy, another service):
# Ray's own default is 20, and a run of `ray start --head` answers the first
JOIN_ATTEMPTS = 3
PROBE_TIMEOUT_S = 120.0  # every node imports the engine once (torch, diffusers: seconds, more on a cold disk)
RETRIES = 4  # per actor restarts and per line retries: a killed worker is replaced, one dying at every start
# (out of memory loading the model) ends the run instead of looping forever
ON_WORKERS = ("torch", "diffusers", "transformers", "difflab.engine.batch_ray")  # what an actor imports


class RayBatchFailed(RuntimeError):
    """The Ray run stopped (workers kept dying, a line raised); finished images are kept, a rerun resumes."""


@dataclass(frozen=True)
class RayOptions:
    address: Optional[str] = None  # a running cluster (HOST:PORT, ray://HOST:PORT, auto); None: start one here
    workers: Optional[int] = None  # actors, one pipeline each; None: one per GPU, else one per node
    threads: Optional[int] = None  # CPU actors: torch threads (and Ray CPUs) each; None: the CPUs shared out


@dataclass(frozen=True)
class PoolSize:
    workers: int
    threads: int  # torch.set_num_threads in each actor
    cpus: float  # Ray resources reserved per actor
    gpus: float


def import_ray():
    """Ray and Ray Data, or a BatchError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: core Ray alone lacks pyarrow and pandas)
    except ImportError as error:
        raise BatchError(f"--ray needs the 'ray' extra (Ray Data; {error}): {EXTRA}") from None
    return ray


# 1. Joining or starting a cluster

def check_address(address: str) -> None:
    """Fail in seconds on an address nothing answers at; ``ray.init`` would keep retrying for about a minute."""
    if address in ("auto", "local"):
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise BatchError(f"--ray-address {address!r}: expected HOST:PORT (the head node's port, 6379 unless "
                         "changed), ray://HOST:PORT (Ray Client) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise BatchError(f"--ray-address {address!r}: no Ray cluster answers there ({reason}); start one with "
                         "`ray start --head` or leave --ray-address out to start one on this machine") from None


@contextmanager
def cluster(ray, address: Optional[str]) -> Iterator[None]:
    """Connected to Ray for the block: the caller's session if it has one (tests, notebooks), else ``address``,
    else a local cluster of this machine's CPUs and GPUs, shut down afterwards."""
    if ray.is_initialized():
        yield
        return
    if address is not None:
        check_address(address)
    # the user sees difflab's progress bar and errors, not Ray's start-up and per-dataset logs or the actors'
    # progress bars (a session the caller started keeps its own settings)
    logging.getLogger("ray.data").setLevel(os.environ.get("RAY_DATA_LOG_LEVEL", logging.ERROR))
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
    try:
        if address is None:
            ray.init(include_dashboard=False, **quiet)
        else:
            with _environment("RAY_gcs_server_port_wait_time_s", str(JOIN_ATTEMPTS)):
                ray.init(address=address, **quiet)
    except Exception as error:  # ConnectionError, or a port that answers but is not Ray: one line naming it
        ray.shutdown()
        where = f"--ray-address {address!r}" if address is not None else "--ray (a local Ray cluster)"
        raise BatchError(f"{where}: could not start or join Ray ({_first_line(error)})") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _probe(modules: tuple[str, ...]) -> Callable[[], tuple[list[str], str]]:
    # built in a closure so cloudpickle ships it by value: a node without difflab can still run it and say so
    def probe() -> tuple[list[str], str]:
        import importlib
        import socket as sockets

        missing = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as error:  # ImportError, or a package that breaks on import
                missing.append(f"{name} ({type(error).__name__}: {error})")
        return missing, sockets.gethostname()

    return probe


def check_workers(ray, modules: tuple[str, ...] = ON_WORKERS) -> None:
    """Every alive node can import what the actors need; a BatchError naming the node and the extra if not."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(_probe(modules))
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in nodes]
    try:
        answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise BatchError(f"--ray: the cluster's nodes did not answer within {PROBE_TIMEOUT_S:.0f} s") from None
    for missing, host in answers:
        if missing:
            raise BatchError(f"--ray: Ray workers on node {host} cannot import {'; '.join(missing)}: install "
                             f"difflab with the ray extra on every node ({EXTRA}), in the same Python version")


def size_pool(ray, options: RayOptions) -> PoolSize:
    """Workers and threads that the cluster can actually place (an actor that never fits would wait forever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    gpus = int(sum(node.get("GPU", 0) for node in nodes))
    cpus = int(sum(node.get("CPU", 0) for node in nodes))
    if gpus:  # one GPU per actor; a CPU each where there are enough
        workers = options.workers or gpus
        if workers > gpus:
            raise BatchError(f"--ray-workers must be 1 to {gpus} (the cluster's GPUs, one per worker); got {workers}")
        return PoolSize(workers, options.threads or 1, 1.0 if cpus >= workers else 0.0, 1.0)
    workers = options.workers or len(nodes)
    if not 1 <= workers <= cpus:
        raise BatchError(f"--ray-workers must be 1 to {cpus} (the cluster's CPUs, one or more per worker); "
                         f"got {workers}")
    threads = options.threads or max(1, cpus // workers)
    while sum(int(node.get("CPU", 0)) // threads for node in nodes) < workers:  # each actor on one node
        threads -= 1
        if threads == 0:
            raise BatchError(f"--ray-workers {workers}: the cluster's nodes cannot place that many workers")
    return PoolSize(workers, threads, float(threads), 0.0)


# 2. The actors

class LineDrawer:
    """A Ray Data callable class: one per actor, holding one pipeline cache; draws one line per call."""

    def __init__(self, threads: int):
        import torch

        from difflab.engine.pipeline import PipelineCache

        torch.set_num_threads(threads)  # Ray reserved this many CPUs for the actor: no oversubscription
        self.cache = PipelineCache()
        self.model: Optional[str] = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from difflab.engine.outputs import image_png
        from difflab.engine.pipeline import run
        from difflab.engine.request import GenerationRequest

        rows: dict[str, list] = {"line": [], "index": [], "seed": [], "seconds": [], "png": []}
        for line, text, missing in zip(batch["line"], batch["request"], batch["missing"]):
            request = GenerationRequest.model_validate_json(text)
            if self.model not in (None, request.model):
                self.cache.clear()  # one model in memory at a time, as the local batch does
            self.model = request.model
            result = run(request, self.cache)  # the whole line, as the local batch runs it
            for index in json.loads(missing):
                rows["line"].append(int(line))
                rows["index"].append(index)
                rows["seed"].append(result.seeds[index])
                rows["seconds"].append(result.seconds / request.n)
                rows["png"].append(image_png(result, index, self.cache.placement))
        return {"line": np.array(rows["line"], dtype=np.int64), "index": np.array(rows["index"], dtype=np.int64),
                "seed": np.array(rows["seed"], dtype=np.int64), "seconds": np.array(rows["seconds"]),
                "png": np.array(rows["png"], dtype=object)}


# 3. Running

def run_batch_ray(plan: BatchPlan, folder: str | Path, options: RayOptions = RayOptions(), *,
                  on_step: Optional[Callable[[int, int], None]] = None) -> Iterator[LineStarted | ImageFinished]:
    """``engine.batch.run_batch`` on Ray: the same events, the same folder. ``on_step`` is accepted for the same
    signature and not called (steps happen in the actors; progress comes per image). Nothing is written before
    the folder check, the cluster and the workers' imports pass."""
    folder = Path(folder)
    check_folder(plan, folder)
    ray = import_ray()
    with cluster(ray, options.address):
        check_workers(ray)
        size = size_pool(ray, options)
        with opened_folder(plan, folder) as done:
            work = []
            for item in plan.lines:
                missing = [index for index in range(item.request.n) if (item.line, index) not in done]
                for index in range(item.request.n):
                    if index not in missing:
                        yield ImageFinished(done[(item.line, index)], skipped=True)
                if missing:
                    work.append({"line": item.line, "request": item.request.model_dump_json(),
                                 "missing": json.dumps(missing)})
            if work:
                yield from _draw(ray, plan, folder, work, size)


def _draw(ray, plan: BatchPlan, folder: Path, work: list[dict], size: PoolSize) -> Iterator[LineStarted | ImageFinished]:
    import ray.data

    items = {item.line: item for item in plan.lines}
    counts = {entry["line"]: len(json.loads(entry["missing"])) for entry in work}  # images this run makes per line
    dataset = ray.data.from_items(work, override_num_blocks=len(work))  # one block per line: one task per line
    context = dataset.context
    context.execution_options.preserve_order = True  # the manifest in plan order, as the local batch writes it
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    with warnings.catch_warnings():  # the retry bounds are still "ray_remote_args" in Ray 2.60 (pyproject caps <2.64)
        warnings.simplefilter("ignore", DeprecationWarning)
        drawn = dataset.map_batches(
            LineDrawer, batch_size=1, batch_format="numpy", fn_constructor_kwargs={"threads": size.threads},
            compute=ray.data.ActorPoolStrategy(size=size.workers), num_cpus=size.cpus, num_gpus=size.gpus,
            max_restarts=RETRIES, max_task_retries=RETRIES)
    written: set[tuple[int, int]] = set()
    started: set[int] = set()
    try:
        for row in drawn.iter_rows():
            line, index = int(row["line"]), int(row["index"])
            if (line, index) in written:
                continue  # a retried line delivered twice: its first copy is already on disk
            item = items[line]
            if line not in started:
                started.add(line)
                yield LineStarted(line, counts[line])
            entry = save_image(folder, item, index, bytes(row["png"]), int(row["seed"]), float(row["seconds"]))
            written.add((line, index))
            yield ImageFinished(entry, skipped=False)
    except ray.exceptions.RayError as error:
        raise RayBatchFailed(f"the Ray run stopped after {len(written)} image(s) of this run "
                             f"({_first_line(error)}); finished images are kept: rerun the same command to "
                             "resume") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
