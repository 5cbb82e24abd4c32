"""Benchmark: CPU backends on one machine, rows measured interleaved in one run (issue 20).

Rows: bare diffusers (PyTorch fp32), difflab torch, difflab openvino f32, difflab openvino bf16, bare diffusers
under PyTorch bf16 autocast, difflab torch with ``--compile`` (engine/compile.py: its U-Net torch.compile'd; its
first call, which compiles, is timed apart as its warm-up). bf16 rows run only on a CPU with native bf16
(avx512_bf16 / amx_bf16): elsewhere difflab refuses openvino bf16 by name, and emulated bf16 autocast measures
nothing a user would choose. The compiled row holds a second copy of the model, so ``--no-compile-row`` leaves it
out where memory is short (SD 1.5: about 4 GB more, beside OpenVINO's conversion peak of about 20 GB).

Columns: seconds per image at ``--steps`` (median over ``--images`` rounds; each round runs every row once, in
turn, so drift hits all rows alike; pipelines are loaded and the OpenVINO rows converted and compiled before the
first round), first image of a fresh ``difflab generate`` process (with an empty and with
a warm OpenVINO cache), that process's peak resident memory, and the largest pixel difference from bare diffusers
(same weights, scheduler, seeds).

Workloads:
- ``tiny``: the bundled tiny-shapes model at 64x64;
- ``sd15``: Stable Diffusion 1.5's architecture (bench/configs/sd15/*.json, the published configs) with random
  weights at 512x512, saved to a temporary folder (about 4 GB); nothing is downloaded;
- ``sdxl``: SDXL's U-Net (bench/configs/sdxl/unet.json) per call only, PyTorch alone: converting it in fp32 needs
  more than 24 GB (docs/MEASURED), so the OpenVINO rows are not attempted below 48 GB of memory.

    .venv/bin/python bench/cpu_backends.py --workloads tiny --steps 20 --images 3
    .venv/bin/python bench/cpu_backends.py --workloads sd15 --steps 2 --images 1 --out bench/results/cpu-backends.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
PROMPT = "a red circle on a blue background"
SEED = 7


def _config(path: Path) -> dict:
    return {key: value for key, value in json.loads(path.read_text()).items() if not key.startswith("_comment")}


def build_sd15(folder: Path) -> Path:
    """SD 1.5's architecture with random weights, saved as a diffusers folder (safetensors)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from difflab.train.tokenizer import build_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    tokenizer = build_tokenizer(folder.parent / "tokenizer-src", 77)
    text = _config(CONFIGS / "sd15" / "text_encoder.json")
    encoder = CLIPTextModel(CLIPTextConfig(**text, bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler_config = {k: v for k, v in _config(CONFIGS / "sd15" / "scheduler.json").items() if k != "_class_name"}
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**_config(CONFIGS / "sd15" / "vae.json")), text_encoder=encoder, tokenizer=tokenizer,
        unet=UNet2DConditionModel(**_config(CONFIGS / "sd15" / "unet.json")),
        scheduler=PNDMScheduler(**scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def fresh_process(model: str, size: int, steps: int, backend: str, cache_dir: Path, out: Path) -> tuple[float, float]:
    """(seconds to the first image on disk, peak resident GB) of one ``difflab generate`` process."""
    command = [sys.executable, "-m", "difflab.cli", "generate", PROMPT, "--model", model, "--steps", str(steps),
               "--width", str(size), "--height", str(size), "--seed", str(SEED), "--guidance-end", "1",
               "--backend", backend, "-o", str(out)]
    environment = {**os.environ, "DIFFLAB_OPENVINO_CACHE": str(cache_dir)}
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stop the child while we only poll
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=errors)
    # the child's own high-water mark (VmHWM of its address space, read until it exits): wait4's ru_maxrss would
    # report this bench process's peak instead, as Linux carries maxrss over fork and exec (20.7 GB for every row)
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _high_water_kb(process.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        errors.seek(0)
        raise RuntimeError(f"{' '.join(command)} failed: {errors.read().decode(errors='replace')[-2000:]}")
    errors.close()
    return seconds, peak_kb / 1024**2


def _high_water_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited between poll() and the read
    return 0


def per_image(model_path: Path, model: str, size: int, steps: int, images: int, native_bf16: bool,
              compile_row: bool = True) -> dict:
    """Seconds per image and pixel difference for every in-process row, interleaved."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from difflab.engine.backends import Backend, pipeline_cache
    from difflab.engine.backends.openvino_modules import STATS
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    bare = StableDiffusionPipeline.from_pretrained(str(model_path), use_safetensors=True, local_files_only=True)
    bare.set_progress_bar_config(disable=True)
    torch_cache = PipelineCache()
    request = build_request(prompt=PROMPT, model=model, steps=steps, width=size, height=size, seed=SEED,
                            guidance_end=1.0)

    def bare_image(autocast: bool):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return bare(PROMPT, num_inference_steps=steps, width=size, height=size,
                        guidance_scale=request.guidance if request.guidance is not None else 7.5,
                        generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]

    rows = {"bare diffusers (PyTorch fp32)": lambda: bare_image(False),
            "difflab torch": lambda: run(request, torch_cache).images[0]}
    skipped = {}
    for precision in ("f32", "bf16"):
        name = f"difflab openvino {precision}"
        if precision == "bf16" and not native_bf16:
            skipped[name] = "refused: this CPU has no avx512_bf16/amx_bf16"
            continue
        cache = pipeline_cache(Backend("openvino", precision))
        cache._pipelines = torch_cache._pipelines  # the same loaded PyTorch modules as the torch row (memory)
        rows[name] = (lambda cache=cache: run(request, cache).images[0])
    if native_bf16:
        rows["bare diffusers, PyTorch bf16 autocast"] = lambda: bare_image(True)
    else:
        skipped["bare diffusers, PyTorch bf16 autocast"] = "not run: no native bf16 (emulated, not a user's choice)"
    compiled_cache = None
    if compile_row:
        compiled_cache = pipeline_cache(Backend("torch"), compile=True)  # its own copy: compiling is in place
        rows["difflab torch --compile"] = lambda: run(request, compiled_cache).images[0]
    else:
        skipped["difflab torch --compile"] = "not run (--no-compile-row)"

    # the model's own default guidance, so bare and difflab agree: resolve it once through difflab
    from difflab.engine.pipeline import Settings
    from difflab.engine.registry import resolve_model

    settings = Settings.of(request, resolve_model(model))
    request = request.model_copy(update={"guidance": settings.guidance})
    first = {}
    conversion_started = time.perf_counter()
    torch_cache.get(resolve_model(model))  # loaded before timing (bare diffusers loaded above)
    for name, draw in rows.items():  # warm-up of the OpenVINO rows only: conversion and compilation, timed apart
        if "openvino" in name:
            began = time.perf_counter()
            first[name] = draw()
            print(f"  warm-up {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    warmup = time.perf_counter() - conversion_started
    compile_warmup = None
    if compiled_cache is not None:  # torch.compile's first image (Inductor's cache as found), timed apart
        began = time.perf_counter()
        first["difflab torch --compile"] = rows["difflab torch --compile"]()
        compile_warmup = time.perf_counter() - began
        print(f"  warm-up difflab torch --compile: {compile_warmup:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(images):
        for name, draw in rows.items():
            began = time.perf_counter()
            image = draw()
            times[name].append(time.perf_counter() - began)
            print(f"  round {round_ + 1} {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
            first.setdefault(name, image)
            assert np.array_equal(np.asarray(image), np.asarray(first[name])), f"{name} is not deterministic"
    reference = np.asarray(first["bare diffusers (PyTorch fp32)"], dtype=np.int16)
    results = {}
    for name in rows:
        difference = int(np.abs(np.asarray(first[name], dtype=np.int16) - reference).max())
        results[name] = {"seconds": statistics.median(times[name]), "all": times[name], "max_diff": difference}
    return {"rows": results, "skipped": skipped, "warmup_s": warmup, "conversions": dict(STATS),
            "compile_warmup_s": compile_warmup, "peak_rss_gb": peak_rss_gb()}


def sdxl_unet_calls(repeats: int) -> dict:
    """Seconds per SDXL U-Net call (batch 2 = one CFG step, 128x128 latents), PyTorch fp32 only."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_config(CONFIGS / "sdxl" / "unet.json")).eval()
    inputs = (torch.randn(2, 4, 128, 128), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 2048))
    added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            began = time.perf_counter()
            unet(*inputs, added_cond_kwargs=added)
            times.append(time.perf_counter() - began)
    return {"pytorch_fp32_s": min(times), "all": times,
            "parameters_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def workload(name: str, args, scratch: Path, native_bf16: bool) -> dict:
    if name == "sdxl":
        return {"sdxl": sdxl_unet_calls(args.images)}
    if name == "tiny":
        from difflab.engine.registry import resolve_model

        model, size = "tiny-shapes", 64
        model_path = resolve_model(model).path
    else:
        model_path = build_sd15(scratch / "sd15")
        model, size = str(model_path), 512
    print(f"{name}: in-process rows", file=sys.stderr, flush=True)
    report = per_image(model_path, model, size, args.steps, args.images, native_bf16, not args.no_compile_row)
    fresh = {}
    if not args.no_fresh:
        print(f"{name}: fresh processes", file=sys.stderr, flush=True)
        empty = scratch / f"{name}-empty-cache"
        # interleaved: torch, openvino with an empty cache, then openvino again with the cache it just filled
        fresh["difflab torch"] = fresh_process(model, size, args.steps, "torch", empty, scratch / "out")
        fresh["difflab openvino f32, empty cache"] = fresh_process(model, size, args.steps, "openvino", empty,
                                                                   scratch / "out")
        fresh["difflab openvino f32, warm cache"] = fresh_process(model, size, args.steps, "openvino", empty,
                                                                  scratch / "out")
    report["fresh"] = fresh
    report["model"], report["size"] = model, size
    return report


def markdown(reports: dict, args, machine: str) -> str:
    lines = [f"# CPU backends (bench/cpu_backends.py)", "",
             f"Command: `{' '.join(['bench/cpu_backends.py', *sys.argv[1:]])}`", f"Machine: {machine}", ""]
    for name, report in reports.items():
        if "sdxl" in report:
            sdxl = report["sdxl"]
            lines += [f"## sdxl: SDXL base U-Net ({sdxl['parameters_m']:.1f}M parameters, random weights), "
                      "one call at batch 2, 128x128 latents", "",
                      f"PyTorch fp32: {sdxl['pytorch_fp32_s']:.2f} s per call (best of {len(sdxl['all'])}: "
                      f"{', '.join(f'{t:.2f}' for t in sdxl['all'])}). OpenVINO rows not run: converting this "
                      "U-Net in fp32 needs more than 24 GB.", ""]
            continue
        rows, base = report["rows"], report["rows"]["bare diffusers (PyTorch fp32)"]["seconds"]
        lines += [f"## {name}: {report['model'] if name == 'tiny' else 'SD 1.5 architecture, random weights'}, "
                  f"{report['size']}x{report['size']}, {args.steps} steps, median of {args.images} interleaved "
                  "round(s)", "",
                  f"| row | s/image ({args.steps} steps) | vs bare | max pixel diff vs bare (/255) |",
                  "|---|---:|---:|---:|"]
        for row, values in rows.items():
            lines.append(f"| {row} | {values['seconds']:.2f} | {base / values['seconds']:.2f}x | "
                         f"{values['max_diff']} |")
        for row, why in report["skipped"].items():
            lines.append(f"| {row} | {why} | | |")
        lines += ["", f"OpenVINO warm-up (conversions or cache loads, compilation, one image): {report['warmup_s']:.1f} s; "
                  f"bench process peak RSS {report['peak_rss_gb']:.1f} GB; OpenVINO events: {report['conversions']}",
                  ""]
        if report.get("compile_warmup_s") is not None:
            from difflab.engine.compile import cache_dir

            lines += [f"torch.compile's first image (compiling the U-Net; Inductor cache {cache_dir()} as found): "
                      f"{report['compile_warmup_s']:.1f} s", ""]
        if report["fresh"]:
            lines += ["| fresh `difflab generate` process | seconds to first image | peak RSS (GB) |",
                      "|---|---:|---:|"]
            for row, (seconds, rss) in report["fresh"].items():
                lines.append(f"| {row} | {seconds:.1f} | {rss:.2f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="tiny", help="comma list of tiny, sd15, sdxl")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=3, help="interleaved rounds (median); sdxl: U-Net calls")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process columns")
    parser.add_argument("--no-compile-row", action="store_true", help="leave out the torch.compile row (it holds "
                        "a second copy of the model)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown tables here")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the SD 1.5 model and outputs "
                        "[default: a temporary one]")
    args = parser.parse_args()
    import platform

    import torch

    from difflab.engine.backends import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    machine = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
               f"thread(s), native bf16: {native_bf16}")
    reports = {}
    with tempfile.TemporaryDirectory(prefix="cpu-backends-") as scratch:
        folder = args.scratch or Path(scratch)  # --scratch keeps the 4 GB SD 1.5 folder for the next run
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.workloads.split(","):
            reports[name] = workload(name.strip(), args, folder, native_bf16)
    text = markdown(reports, args, machine)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
