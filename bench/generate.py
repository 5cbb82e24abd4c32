"""Benchmark: `difflab generate` against a bare diffusers pipeline call, same model, settings and seeds, one run.

Two measurements, each as a ratio difflab / diffusers (targets from issue 8: <= 1.03 warm, <= 1.15 cold):

- warm: one process, both pipelines loaded; per image, difflab's engine (request validation, cached pipeline,
  fresh scheduler, per-image generator, PNG with A1111 parameters + JSON record, atomic write) against
  ``pipe(...)`` + ``image.save(png)``. Repetitions alternate between the two so drift hits both alike; median.
- cold: a fresh process to the first image on disk: ``difflab generate PROMPT`` against a minimal diffusers
  script doing the same (import, load, swap in DPM-Solver++, generate, save). Alternating, median.

It also checks that both paths give the same pixels (they should: same weights, scheduler, seed and generator).

    .venv/bin/python bench/generate.py                   # the bundled tiny-shapes model
    .venv/bin/python bench/generate.py --model PATH --width 64 --height 64 --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"

BARE_SCRIPT = """
import sys, torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
path, out, steps, guidance, width, height, seed, guided = sys.argv[1:9]
pipe = StableDiffusionPipeline.from_pretrained(path, use_safetensors=True, local_files_only=True)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
def stop_guidance(pipe, step, timestep, tensors):  # diffusers' documented dynamic-CFG callback
    if step == int(guided) - 1:
        pipe._guidance_scale = 0.0
        tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
    return tensors
with torch.inference_mode():
    image = pipe({prompt!r}, num_inference_steps=int(steps), guidance_scale=float(guidance), width=int(width),
                 height=int(height), generator=[torch.Generator("cpu").manual_seed(int(seed))],
                 callback_on_step_end=stop_guidance, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]
image.save(out)
print(out)
"""


def warm(model_path: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from difflab.engine.guidance_interval import guided_steps
    from difflab.engine.outputs import save_result
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    cache = PipelineCache()
    bare = StableDiffusionPipeline.from_pretrained(str(model_path), use_safetensors=True, local_files_only=True)
    bare.scheduler = DPMSolverMultistepScheduler.from_config(bare.scheduler.config)
    bare.set_progress_bar_config(disable=True)
    settings = dict(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                    guidance_end=args.guidance_end)

    def difflab_once(seed: int, folder: Path):
        request = build_request(prompt=PROMPT, model=args.model, seed=seed, scheduler="DPM++ 2M", **settings)
        result = run(request, cache)
        save_result(result, folder)
        return result.images[0]

    def bare_once(seed: int, folder: Path):
        with torch.inference_mode():
            image = bare(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.width,
                         height=args.height, generator=[torch.Generator("cpu").manual_seed(seed)],
                         callback_on_step_end=stop_guidance, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]
        image.save(folder / f"{seed}.png")
        return image

    def stop_guidance(pipe, step, timestep, tensors):  # the same callback as the bare script's
        if step == guided_steps(args.guidance_end, args.steps) - 1:
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
        return tensors

    times = {"difflab": [], "diffusers": []}
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        difflab_once(0, folder), bare_once(0, folder)  # warm-up: first-call allocations, lazy imports
        for rep in range(args.repeats):
            order = [("difflab", difflab_once), ("diffusers", bare_once)]
            images = {}
            for name, fn in order if rep % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                images[name] = fn(rep, folder)
                times[name].append(time.perf_counter() - started)
            diff = np.abs(np.asarray(images["difflab"], dtype=np.int16) - np.asarray(images["diffusers"], dtype=np.int16))
            worst = max(worst, int(diff.max()))
    return {"times": times, "max_pixel_difference": worst}


def cold(model_path: Path, args: argparse.Namespace) -> dict:
    from difflab.engine.guidance_interval import guided_steps

    difflab_bin = Path(sys.executable).with_name("difflab")
    times = {"difflab": [], "diffusers": []}
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare.py"
        script.write_text(BARE_SCRIPT.format(prompt=PROMPT))
        commands = {
            "difflab": [str(difflab_bin), "generate", PROMPT, "--model", args.model, "--steps", str(args.steps),
                        "--guidance", str(args.guidance), "--guidance-end", str(args.guidance_end), "--width", str(args.width), "--height", str(args.height),
                        "--scheduler", "DPM++ 2M", "-o", str(Path(tmp) / "difflab")],
            "diffusers": [sys.executable, str(script), str(model_path), str(Path(tmp) / "bare.png"), str(args.steps),
                          str(args.guidance), str(args.width), str(args.height), "0",
                          str(guided_steps(args.guidance_end, args.steps))],
        }
        for rep in range(args.cold_repeats + 1):  # the first round only warms the OS file cache
            names = ["difflab", "diffusers"] if rep % 2 == 0 else ["diffusers", "difflab"]
            for name in names:
                started = time.perf_counter()
                subprocess.run(commands[name], check=True, capture_output=True, env=env)
                if rep:
                    times[name].append(time.perf_counter() - started)
    return {"times": times}


def row(label: str, times: dict) -> str:
    ours, base = statistics.median(times["difflab"]), statistics.median(times["diffusers"])
    return f"| {label} | {ours:.3f} | {base:.3f} | {ours / base:.3f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--guidance-end", type=float, default=None, help="fraction of the steps with guidance "
                        "[the model's: 0.7 for tiny-shapes]; the bare script stops CFG at the same step")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="warm repetitions of each")
    parser.add_argument("--cold-repeats", type=int, default=5, help="cold starts of each")
    parser.add_argument("--quick", action="store_true", help="3 warm, 1 cold: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.cold_repeats = 3, 1

    import torch

    from difflab.engine.registry import resolve_model

    resolved = resolve_model(args.model)
    model_path = resolved.path
    if args.guidance_end is None:
        args.guidance_end = resolved.guidance_end
    result_warm = warm(model_path, args)
    result_cold = cold(model_path, args)
    print(f"model {args.model}: {args.width}x{args.height}, {args.steps} steps DPM++ 2M, CFG {args.guidance} on the first "
          f"{args.guidance_end:g} of the steps; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"warm: {args.repeats} alternating repetitions; cold: {args.cold_repeats} alternating fresh processes "
          f"(after one untimed round); medians in seconds")
    print("| measurement | difflab | bare diffusers | ratio |")
    print("|---|---|---|---|")
    print(row("warm: one image, generated and saved", result_warm["times"]))
    print(row("cold: fresh process to first PNG", result_cold["times"]))
    print(f"max per-pixel difference difflab vs diffusers, same seeds: {result_warm['max_pixel_difference']}/255")


if __name__ == "__main__":
    main()
