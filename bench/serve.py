"""Benchmark: `difflab serve` throughput (images/s) and latency for 1 and 8 concurrent clients, with and without
batching (``--batch``), against the engine called directly in one process (the baseline, measured in the same run).

Each client sends synchronous ``POST /v1/generate`` requests (one image each, distinct seeds and prompts) until the
row's jobs are used up; a 429 is retried after its Retry-After. The server is a real ``difflab serve`` process on a
free loopback port with a fresh data folder, started once without and once with ``--batch``. The baseline runs the
same requests through ``engine.pipeline.run`` and ``save_result`` in this process while the server idles, so they
never share the CPU: once before any server starts, and again right before and right after each server row (their
mean is the row's "adjacent baseline", what the row is compared with), so that a machine whose load drifts during
the run (a shared one) skews the ratios less. "calls" counts the pipeline calls the server made (jobs that started together ran as one).
With one client there is never a second job queued, so batching has nothing to merge; with 8 up to 8 wait.
The last lines compare the two rows the server is judged by with their targets (issue 19): one client without
batching at >= 0.9x the engine, 8 clients with ``--batch`` at >= 1.5x.

    .venv/bin/python bench/serve.py                                    # the bundled tiny-shapes model, 32 jobs
    .venv/bin/python bench/serve.py --tiny --jobs 16                   # a tiny random-weight pipeline (any machine)
    .venv/bin/python bench/serve.py --model PATH --width 32 --height 32 --steps 2 --jobs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PROMPTS = ("a red circle on a blue background", "a green star", "a small hexagon on the left", "a yellow square")
DEFAULT_OUT = Path(__file__).parent / "results" / "serve.md"


@dataclass
class Row:
    name: str
    batching: str
    clients: str
    rate: float  # images/s
    latencies: list[float]
    calls: int  # pipeline calls
    baseline: float = 0.0  # images/s of the engine in-process, measured right before and after this row (mean)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_body(args: argparse.Namespace, model: str, seed: int) -> dict:
    body = {"prompt": PROMPTS[seed % len(PROMPTS)], "model": model, "seed": seed, "steps": args.steps}
    if args.width:
        body.update(width=args.width, height=args.height)
    return body


def baseline(args: argparse.Namespace, model: str, cache) -> Row:
    """Images/s and per-image seconds for the engine called directly (warm: the pipeline loads first)."""
    from difflab.engine.outputs import save_result
    from difflab.engine.pipeline import run
    from difflab.engine.request import GenerationRequest

    out = Path(tempfile.mkdtemp(prefix="bench-serve-baseline-"))
    run(GenerationRequest(**request_body(args, model, 0)), cache)  # load (once per cache) and warm up
    latencies = []
    started = time.perf_counter()
    for seed in range(args.jobs):
        t0 = time.perf_counter()
        save_result(run(GenerationRequest(**request_body(args, model, seed)), cache), out)
        latencies.append(time.perf_counter() - t0)
    rate = args.jobs / (time.perf_counter() - started)
    return Row("engine in-process (baseline)", "-", "-", rate, latencies, args.jobs, rate)


def start_server(data_dir: Path, models_dir: Path | None, port: int, batch_max_images: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "difflab.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--max-queue", "1000"]
    if batch_max_images > 1:
        command += ["--batch", "--batch-max-images", str(batch_max_images)]
    if models_dir is not None:
        command += ["--models-dir", str(models_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start in 600 s")


def through_server(args: argparse.Namespace, url: str, model: str, clients: int, first_seed: int,
                   jobs: int) -> tuple[float, list[float], int]:
    """(images/s, per-request seconds, pipeline calls) for ``jobs`` synchronous requests from ``clients`` threads."""
    import httpx

    seeds = iter(range(first_seed, first_seed + jobs))
    latencies: list[float] = []
    starts: set[float] = set()

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for seed in seeds:  # the shared iterator hands each seed to exactly one client
                t0 = time.perf_counter()
                while (response := http.post("/v1/generate", json=request_body(args, model, seed))).status_code == 429:
                    time.sleep(int(response.headers["retry-after"]))
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                starts.add(response.json()["started"])  # the jobs of one merged call share their start time

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return jobs / (time.perf_counter() - started), latencies, len(starts)


def tiny_pipeline() -> Path:
    """The engine tests' tiny random-weight SD pipeline (bench/gpu.py builds it the same way)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu import tiny_models

    return Path(tiny_models(["sd"], Path(tempfile.mkdtemp(prefix="bench-serve-tiny-")))["sd"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def table(rows: list[Row]) -> str:
    lines = ["| setup | batching | clients | images/s | adjacent baseline images/s | vs baseline | pipeline calls "
             "| images per call | p50 latency s | p95 latency s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        jobs = len(row.latencies)
        lines.append(f"| {row.name} | {row.batching} | {row.clients} | {row.rate:.2f} | {row.baseline:.2f} "
                     f"| {row.rate / row.baseline:.2f} | {row.calls} | {jobs / row.calls:.2f} "
                     f"| {statistics.median(row.latencies):.3f} | {percentile(row.latencies, 0.95):.3f} |")
    return "\n".join(lines)


TARGETS = (("one client, no batching", "off", "1", 0.9), ("8 clients, --batch", "on", "8", 1.5))


def verdicts(rows: list[Row]) -> str:
    """The rows the server is judged by, against their targets (when this run measured them)."""
    lines = []
    for label, batching, clients, target in TARGETS:
        row = next((r for r in rows[1:] if r.batching.startswith(batching) and r.clients == clients), None)
        if row is not None:
            ratio = row.rate / row.baseline
            lines.append(f"- {label}: {ratio:.2f}x the engine in-process (target >= {target}: "
                         f"{'met' if ratio >= target else 'missed'})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-shapes", help="a preset, or a diffusers folder")
    parser.add_argument("--tiny", action="store_true", help="a tiny random-weight SD pipeline (tests/engine's); "
                        "32x32 and 4 steps unless given")
    parser.add_argument("--jobs", type=int, default=32, help="jobs per row (one image each)")
    parser.add_argument("--steps", type=int, default=None, help="[default 20; 4 with --tiny]")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--batch-max-images", type=int, default=8, help="--batch-max-images of the batching server")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write ('-': print only)")
    args = parser.parse_args()
    if args.tiny:
        args.model = str(tiny_pipeline())
        args.width, args.height = args.width or 32, args.height or 32
    args.steps = args.steps or (4 if args.tiny else 20)

    models_dir, server_model = None, args.model
    if Path(args.model).is_dir():  # the server offers folders by name from its --models-dir
        models_dir = Path(tempfile.mkdtemp(prefix="bench-serve-models-"))
        (models_dir / "model").symlink_to(Path(args.model).resolve(), target_is_directory=True)
        server_model = "model"
    engine_model = str(Path(args.model).resolve()) if models_dir else args.model
    counts = [int(count) for count in args.clients.split(",")]

    from difflab.engine.pipeline import PipelineCache

    cache = PipelineCache()
    rows = [baseline(args, engine_model, cache)]
    for batch_max_images in (1, args.batch_max_images):
        data_dir = Path(tempfile.mkdtemp(prefix="bench-serve-data-"))
        port = free_port()
        server = start_server(data_dir, models_dir, port, batch_max_images)
        try:
            url = f"http://127.0.0.1:{port}"
            through_server(args, url, server_model, 1, 100_000, 2)  # warm-up: the server loads the pipeline
            for count in counts:
                before = baseline(args, engine_model, cache).rate  # the server idles meanwhile
                rate, latencies, calls = through_server(args, url, server_model, count, count * 1000, args.jobs)
                after = baseline(args, engine_model, cache).rate
                batching = f"on (max {batch_max_images})" if batch_max_images > 1 else "off"
                rows.append(Row("difflab serve", batching, str(count), rate, latencies, calls, (before + after) / 2))
        finally:
            server.terminate()
            server.wait(60)

    import torch

    size = f"{args.width}x{args.height}" if args.width else "the model's size"
    model = "a tiny random-weight SD pipeline (tests/engine's)" if args.tiny else f"model {args.model}"
    header = (f"{args.jobs} jobs of 1 image per row, {args.steps} steps, {size}, {model}; torch {torch.__version__} on "
              f"{'CUDA' if torch.cuda.is_available() else 'CPU'} ({platform.machine()}, {os.cpu_count()} CPUs, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    text = f"{header}\n\n{table(rows)}\n\n{verdicts(rows)}\n"
    print("\n" + text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# difflab serve throughput\n\n{text}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
