"""Benchmark: `difflab serve` throughput (images/s) and latency for 1 and 8 concurrent clients, against the engine
called directly in one process (the baseline, measured in the same run).

Each client sends synchronous ``POST /v1/generate`` requests (one image each, distinct seeds) until the run's
jobs are used up; a 429 is retried after its Retry-After. The server is a real ``difflab serve`` process on a
free loopback port with a fresh data folder. The baseline runs the same requests through ``engine.pipeline.run``
and ``save_result`` in this process, before the server starts, so the two never share the CPU.

    .venv/bin/python bench/serve.py                          # the bundled tiny-shapes model, 32 jobs
    .venv/bin/python bench/serve.py --model PATH --width 32 --height 32 --steps 2 --jobs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "a red circle on a blue background"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_body(args: argparse.Namespace, model: str, seed: int) -> dict:
    body = {"prompt": PROMPT, "model": model, "seed": seed, "steps": args.steps}
    if args.width:
        body.update(width=args.width, height=args.height)
    return body


def baseline(args: argparse.Namespace, model: str) -> tuple[float, list[float]]:
    """Images/s and per-image seconds for the engine called directly (warm: the pipeline loads first)."""
    from difflab.engine.outputs import save_result
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import GenerationRequest

    cache = PipelineCache()
    out = Path(tempfile.mkdtemp(prefix="bench-serve-baseline-"))
    run(GenerationRequest(**request_body(args, model, 0)), cache)  # load and warm up
    latencies = []
    started = time.perf_counter()
    for seed in range(args.jobs):
        t0 = time.perf_counter()
        save_result(run(GenerationRequest(**request_body(args, model, seed)), cache), out)
        latencies.append(time.perf_counter() - t0)
    return args.jobs / (time.perf_counter() - started), latencies


def start_server(data_dir: Path, models_dir: Path | None, port: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "difflab.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--max-queue", "1000"]
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


def through_server(args: argparse.Namespace, url: str, model: str, clients: int, first_seed: int) -> tuple[float, list[float]]:
    import httpx

    seeds = iter(range(first_seed, first_seed + args.jobs))
    latencies: list[float] = []

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for seed in seeds:  # the shared iterator hands each seed to exactly one client
                t0 = time.perf_counter()
                while (response := http.post("/v1/generate", json=request_body(args, model, seed))).status_code == 429:
                    time.sleep(int(response.headers["retry-after"]))
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return args.jobs / (time.perf_counter() - started), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-shapes", help="a preset, or a diffusers folder")
    parser.add_argument("--jobs", type=int, default=32, help="jobs per row (one image each)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    args = parser.parse_args()

    models_dir, server_model = None, args.model
    if Path(args.model).is_dir():  # the server offers folders by name from its --models-dir
        models_dir = Path(tempfile.mkdtemp(prefix="bench-serve-models-"))
        (models_dir / "model").symlink_to(Path(args.model).resolve(), target_is_directory=True)
        server_model = "model"
    engine_model = str(Path(args.model).resolve()) if models_dir else args.model

    rows = [("engine in-process (baseline)", *baseline(args, engine_model))]
    data_dir = Path(tempfile.mkdtemp(prefix="bench-serve-data-"))
    port = free_port()
    server = start_server(data_dir, models_dir, port)
    try:
        url = f"http://127.0.0.1:{port}"
        through_server(args, url, server_model, 1, 10_000)  # warm-up: the server loads the pipeline
        for count in (int(c) for c in args.clients.split(",")):
            rows.append((f"difflab serve, {count} client(s)", *through_server(args, url, server_model, count, count * 1000)))
    finally:
        server.terminate()
        server.wait(60)

    base = rows[0][1]
    print(f"\n{args.jobs} jobs of 1 image, {args.steps} steps, model {args.model}, "
          f"{os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'':32} {'images/s':>9} {'vs baseline':>12} {'p50 latency s':>14} {'p95 latency s':>14}")
    for name, rate, latencies in rows:
        ordered = sorted(latencies)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        print(f"{name:32} {rate:9.2f} {rate / base:12.2f} {statistics.median(ordered):14.3f} {p95:14.3f}")


if __name__ == "__main__":
    main()
