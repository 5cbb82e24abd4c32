"""Benchmark: `difflab batch` throughput (images/s) on this process vs on Ray with 1 and 2 workers (issue 21).

One run measures, on the same prompt file (``--images`` lines of one image each, distinct prompts and seeds):
- the local batch (``engine.batch.run_batch``, this process, ``--local-threads`` torch threads: 1 by default, the
  Ray workers' count, so the Ray rows differ from it only by Ray; on a shared machine more threads than free cores
  also make OpenMP wait on each other);
- Ray with 1 worker and with 2 workers, one torch thread (one Ray CPU) each, on a local cluster of this machine
  (``ray.init(num_cpus=2)`` unless ``--cpus``), through ``engine.batch_ray.run_batch_ray``: exactly what
  ``difflab batch --ray`` runs.
Ray's start-up is stated separately: ``ray.init`` once, then per row the time to the first image (starting the
actors and loading one pipeline in each). Each Ray row gives its rate over the whole row and after the first image
(steady state); the target (issue 21) compares steady and whole-row rates of 2 workers with 1 worker: >= 1.6x.
Every row writes its own folder; the Ray folders are checked to hold the local run's file names.

With a GPU (torch sees CUDA), a GPU section runs Ray with 1..N workers x 1 GPU on ``--gpu-model`` (default
tiny-shapes at 512 px, since no hub model is reachable offline); without one it is skipped and says so.

    .venv/bin/python bench/batch_scale.py                          # 64 images on tiny-shapes, results/batch-scale.md
    .venv/bin/python bench/batch_scale.py --images 8 --steps 4 --out /tmp/smoke.md    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "results" / "batch-scale.md"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
PLACES = ("on the left", "on the right", "in the middle", "at the top")


@dataclass
class Row:
    name: str
    images: int
    seconds: float  # whole row: from the call to the last image written
    first: float  # seconds to the first image (Ray: actors started, pipelines loaded)

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def steady(self) -> float:  # images/s after the first image
        return (self.images - 1) / max(self.seconds - self.first, 1e-9)


def write_prompts(path: Path, images: int, steps: int, model: str, size: int) -> Path:
    rows = [{"prompt": f"a {COLOURS[i % 4]} {SHAPES[i // 4 % 5]} {PLACES[i // 20 % 4]}", "seed": 1000 + i,
             "steps": steps, "model": model, "width": size, "height": size} for i in range(images)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def timed(name: str, events) -> Row:
    from difflab.engine.batch import ImageFinished

    started, first, made = time.perf_counter(), None, 0
    for event in events:
        if isinstance(event, ImageFinished) and not event.skipped:
            made += 1
            if first is None:
                first = time.perf_counter() - started
    row = Row(name, made, time.perf_counter() - started, first or 0.0)
    print(f"{name}: {row.images} images in {row.seconds:.1f} s ({row.rate:.2f}/s; first after {row.first:.1f} s, "
          f"then {row.steady:.2f}/s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="tiny-shapes' own default")
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--local-threads", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--gpu-model", default="tiny-shapes")
    parser.add_argument("--gpu-size", type=int, default=512)
    parser.add_argument("--gpu-images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import ray
    import torch

    from difflab.engine.batch import plan_batch, run_batch
    from difflab.engine.batch_ray import RayOptions, run_batch_ray
    from difflab.cli import quiet_libraries
    from difflab.engine.pipeline import PipelineCache

    quiet_libraries()
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="batch-scale-"))
    plan = plan_batch(write_prompts(work / "prompts.jsonl", args.images, args.steps, args.model, args.size))
    torch.set_num_threads(args.local_threads)
    local_threads = torch.get_num_threads()
    rows = [timed(f"local batch ({local_threads} torch threads)", run_batch(plan, work / "local", PipelineCache()))]

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # what `difflab batch --ray` shows: its own progress only
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    ray_init = time.perf_counter() - started
    print(f"ray.init: {ray_init:.1f} s", flush=True)
    for workers in (1, 2):
        folder = work / f"ray-{workers}"
        rows.append(timed(f"Ray, {workers} worker{'s' if workers > 1 else ''} x 1 thread",
                          run_batch_ray(plan, folder, RayOptions(workers=workers, threads=1))))
        assert sorted(p.name for p in folder.glob("0*.png")) == sorted(p.name for p in (work / "local").glob("0*.png"))
    ray.shutdown()
    one, two = rows[1], rows[2]
    gpu_lines = gpu_section(args, work) if torch.cuda.is_available() else \
        ["No GPU on this machine (torch sees no CUDA device): the GPU section was skipped."]

    lines = [
        "# `difflab batch`: local vs Ray (bench/batch_scale.py)", "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` on {platform.node()} ({os.cpu_count()} CPUs; load "
        f"average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: the CPUs are shared with other "
        f"work, so the numbers are one run's, not a clean machine's). {args.images} lines of one image, "
        f"{args.model} {args.size}x{args.size}, {args.steps} steps; torch {torch.__version__}, Ray {ray.__version__}.",
        "",
        "| run | images | seconds | images/s | first image after (s) | images/s after the first |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {r.name} | {r.images} | {r.seconds:.1f} | {r.rate:.2f} | {r.first:.1f} | {r.steady:.2f} |" for r in rows],
        "",
        f"- 2 Ray workers / 1 Ray worker: **{two.rate / one.rate:.2f}x** over the whole row, "
        f"**{two.steady / one.steady:.2f}x** after the first image (target >= 1.6x).",
        f"- Ray 1 worker / local batch: {one.rate / rows[0].rate:.2f}x (whole row).",
        f"- Ray's start-up: `ray.init` of a local cluster {ray_init:.1f} s, once; then per run the actors start and "
        f"each loads the pipeline before its first image: {one.first:.1f} s (1 worker), {two.first:.1f} s (2 "
        f"workers), against {rows[0].first:.1f} s to the local batch's first image (its pipeline load included).",
        "", "## GPU", "", *gpu_lines, "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def gpu_section(args, work: Path) -> list[str]:
    """Ray with 1..N workers x 1 GPU on the GPU model: images/s and the scaling over 1 worker."""
    import ray
    import torch

    from difflab.engine.batch import plan_batch
    from difflab.engine.batch_ray import RayOptions, run_batch_ray

    gpus = torch.cuda.device_count()
    plan = plan_batch(write_prompts(work / "gpu.jsonl", args.gpu_images, 20, args.gpu_model, args.gpu_size))
    ray.init(num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    rows = [timed(f"Ray, {n} worker(s) x 1 GPU", run_batch_ray(plan, work / f"gpu-{n}", RayOptions(workers=n)))
            for n in sorted({1, gpus})]
    ray.shutdown()
    return [f"{gpus} x {torch.cuda.get_device_name(0)}; {args.gpu_images} images of {args.gpu_model} "
            f"{args.gpu_size}x{args.gpu_size}, 20 steps.", "",
            "| run | images/s | first image after (s) | images/s after the first |", "|---|---:|---:|---:|",
            *[f"| {r.name} | {r.rate:.2f} | {r.first:.1f} | {r.steady:.2f} |" for r in rows]]


if __name__ == "__main__":
    main()
