"""Benchmark: SDXL (1024x1024, 30 steps) and Flux-schnell (1024x1024, 4 steps) on a CUDA GPU through difflab's
engine, against the bare diffusers pipeline in the same run, for the speed switches of issue 3.

One row per switch, each against the baseline (nothing else changed):

- baseline: the engine's placement (bf16 where the GPU supports it, else fp16) and PyTorch's fused
  scaled-dot-product attention (SDPA), which is what diffusers uses by default;
- classic attention: no fused SDPA, for comparison: diffusers' ``AttnProcessor`` (explicit softmax(QK^T)V) on the
  U-Net and VAE; Flux's transformer has no classic processor, so there diffusers' ``_native_math`` attention
  backend (SDPA's unfused math kernel) stands in for it;
- channels_last: U-Net and VAE weights and activations in NHWC (Flux: the VAE only, its transformer has no
  convolutions);
- torch.compile of the denoiser (U-Net or transformer); the first call is the compilation, reported apart from
  the warm seconds;
- fp32 (``--fp32``): the pipeline reloaded in float32.

Per row: the first call in seconds (the first image after the switch, through the engine), warm seconds per image
(median of ``--repeats`` calls per side, alternating difflab and bare so drift hits both alike), the ratio
difflab / bare, the warm time against the baseline row, and peak CUDA memory of the warm calls
(``torch.cuda.max_memory_allocated``, reset before every call), and the largest pixel difference between the
two sides' images of the same seed (they should agree: same modules, scheduler, seed and generator).

The bare side is ``type(cached).from_pipe(cached)``: the same pipeline class over the very module objects the
engine's PipelineCache holds, called directly with the settings the engine resolved. Both sides therefore run
identical weights, switches and memory, and the ratio measures only what the engine adds per image (request
validation, a fresh scheduler, per-image generators, prompt handling, the out-of-memory guard). Neither side
saves its images (bench/generate.py measures saving and cold starts).

    .venv/bin/python bench/gpu.py                                      # sdxl and flux-schnell, on a CUDA GPU
    .venv/bin/python bench/gpu.py --models sdxl --repeats 3 --fp32 --compile-mode max-autotune-no-cudagraphs
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu.py --tiny --repeats 1  # tiny random pipelines, any device
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
GIB = 2**30
TINY_FAMILIES = ("sd", "sdxl", "flux")  # what --tiny builds (tests/engine's tiny random-weight pipelines)


# ---- the switches: applied to the pipeline object the engine's PipelineCache holds ----
# The engine has no hook for attention processors, memory formats or torch.compile, so each switch changes the
# cached pipeline's modules in place for its row and undoes that afterwards. The bare pipeline shares those
# modules (from_pipe), so it sees the same switch; only compile, which replaces the denoiser attribute, sets both.

def denoiser_name(pipeline) -> str:
    return "unet" if getattr(pipeline, "unet", None) is not None else "transformer"


@contextlib.contextmanager
def classic_attention(pipelines: list) -> Iterator[str]:
    from diffusers import attention_backend
    from diffusers.models.attention_processor import AttnProcessor

    engine = pipelines[0]
    modules = [m for m in (getattr(engine, "unet", None), getattr(engine, "vae", None)) if m is not None]
    saved = [(module, module.attn_processors) for module in modules]  # the SDPA processors, to put back
    for module in modules:
        module.set_attn_processor(AttnProcessor())
    try:
        if getattr(engine, "transformer", None) is not None:
            # Flux's attention goes through diffusers' dispatcher; the context manager restores the old backend
            with attention_backend("_native_math"):
                yield "VAE: AttnProcessor; transformer: attention backend _native_math"
        else:
            yield "AttnProcessor on U-Net and VAE"
    finally:
        for module, processors in saved:
            module.set_attn_processor(processors)


@contextlib.contextmanager
def channels_last(pipelines: list) -> Iterator[str]:
    import torch

    engine = pipelines[0]
    modules = {name: getattr(engine, name) for name in ("unet", "vae") if getattr(engine, name, None) is not None}
    for module in modules.values():
        module.to(memory_format=torch.channels_last)
    try:
        yield " and ".join(modules) + ("" if "unet" in modules else " only (the transformer has no convolutions)")
    finally:
        for module in modules.values():
            module.to(memory_format=torch.contiguous_format)


def compiled(mode: str) -> Callable[[list], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def switch(pipelines: list) -> Iterator[str]:
        import torch

        name = denoiser_name(pipelines[0])
        original = getattr(pipelines[0], name)
        module = torch.compile(original, mode=None if mode == "default" else mode)
        for pipeline in pipelines:
            setattr(pipeline, name, module)
        try:
            yield f"{name}, mode {mode}; first call = compilation"
        finally:
            for pipeline in pipelines:
                setattr(pipeline, name, original)
            torch._dynamo.reset()  # drop the compiled graphs with the wrapper
    return switch


@contextlib.contextmanager
def unchanged(pipelines: list) -> Iterator[str]:
    yield ""


# ---- measuring ----

def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Optional[float], Any]:
    """(seconds, peak GiB allocated during the call or None off CUDA, fn's result)."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    return seconds, peak, result


def bare_pipeline(cached, settings):
    """The same pipeline class over the cached pipeline's modules, with the scheduler the engine would build."""
    from difflab.engine.registry import FLOW_MATCHING_FAMILIES
    from difflab.engine.schedulers import make_scheduler

    bare = type(cached).from_pipe(cached)
    bare.set_progress_bar_config(disable=True)
    config = dict(bare.scheduler.config)
    # built once, outside the timed calls: the timed call is diffusers alone (set_timesteps resets the state)
    if settings.scheduler is not None and settings.model.family not in FLOW_MATCHING_FAMILIES:
        bare.scheduler = make_scheduler(settings.scheduler, config)
    else:
        bare.scheduler = type(bare.scheduler).from_config(config)
    return bare


def measure(config: str, cache, bare, fields: dict, settings, device: str, repeats: int) -> dict:
    """First call and warm calls of one config, difflab and bare alternating; a row of the table."""
    import numpy as np
    import torch

    from difflab.engine.pipeline import run
    from difflab.engine.request import build_request

    engine_notes: list[str] = []

    def difflab_once(seed: int):
        result = run(build_request(prompt=PROMPT, seed=seed, **fields), cache)
        engine_notes.extend(result.notes)  # an out-of-memory retry would show here
        return result.images[0]

    def bare_once(seed: int):
        with torch.inference_mode():
            return bare(PROMPT, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                        width=settings.width, height=settings.height,
                        generator=[torch.Generator("cpu").manual_seed(seed)]).images[0]

    sides = {"difflab": difflab_once, "bare": bare_once}
    first = {name: timed(lambda fn=fn: fn(0), device)[:2] for name, fn in sides.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    peaks: dict[str, list[float]] = {name: [] for name in sides}
    worst = 0
    for rep in range(repeats):
        images = {}
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            seconds, peak, images[name] = timed(lambda fn=sides[name]: fn(rep + 1), device)
            times[name].append(seconds)
            if peak is not None:
                peaks[name].append(peak)
        difference = np.abs(np.asarray(images["difflab"], np.int16) - np.asarray(images["bare"], np.int16))
        worst = max(worst, int(difference.max()))
    ours, theirs = statistics.median(times["difflab"]), statistics.median(times["bare"])
    return dict(
        config=config, status="ok", first_call_s=first["difflab"][0], first_call_bare_s=first["bare"][0],
        first_call_peak_gib=first["difflab"][1], warm_s=ours, warm_bare_s=theirs, ratio=ours / theirs,
        peak_gib=max(peaks["difflab"], default=None), peak_bare_gib=max(peaks["bare"], default=None),
        max_pixel_difference=worst, times=times, engine_notes=engine_notes,
    )


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def bench_model(name: str, model, fields: dict, args: argparse.Namespace) -> dict:
    """Every config row for one model: load it once through the engine's cache, switch, measure, undo."""
    import torch

    from difflab.engine.device import Placement
    from difflab.engine.pipeline import PipelineCache, Settings
    from difflab.engine.request import build_request

    cache = PipelineCache()
    device, placement = cache.placement.device, cache.placement.describe()
    settings = Settings.of(build_request(prompt=PROMPT, **fields), model)
    started = time.perf_counter()
    cached, _ = cache.get(model)  # what run() uses: loading stays out of the first call
    load_s = time.perf_counter() - started
    bare = bare_pipeline(cached, settings)
    on_cpu = "n/a (needs CUDA)"
    configs: list[tuple[str, Callable, Optional[str]]] = [
        ("baseline (SDPA)", unchanged, None),
        ("classic attention", classic_attention, None),
        ("channels_last", channels_last, None),
        ("torch.compile", compiled(args.compile_mode),
         on_cpu + "; --compile-on-cpu tries it" if device != "cuda" and not args.compile_on_cpu else None),
    ]
    rows = []
    for config, switch, skipped in configs:
        if skipped:
            rows.append(dict(config=config, status=skipped))
            continue
        print(f"{name}: {config} ...", file=sys.stderr, flush=True)
        try:
            with switch([cached, bare]) as note:
                rows.append({**measure(config, cache, bare, fields, settings, device, args.repeats), "note": note})
        except Exception as error:  # one failing switch (no Triton, out of memory) must not lose the other rows
            rows.append(dict(config=config, status=f"failed: {type(error).__name__}: {str(error)[:200]}"))
        free_memory(device)
    if args.fp32:
        if cache.placement.dtype == torch.float32:
            rows.append(dict(config="fp32", status="n/a (the baseline already is fp32 on this device)"))
        else:
            del cached, bare
            cache.clear()
            free_memory(device)
            cache = PipelineCache(placement=Placement(device, torch.float32))
            print(f"{name}: fp32 ...", file=sys.stderr, flush=True)
            try:
                cached, _ = cache.get(model)
                bare = bare_pipeline(cached, settings)
                rows.append({**measure("fp32", cache, bare, fields, settings, device, args.repeats), "note": "reloaded"})
            except Exception as error:
                rows.append(dict(config="fp32", status=f"failed: {type(error).__name__}: {str(error)[:200]}"))
    cached = bare = None  # nothing of this model may stay on the GPU while the next one loads
    cache.clear()
    free_memory(device)
    baseline = rows[0].get("warm_s")
    for row in rows:
        if baseline and "warm_s" in row:
            row["vs_baseline"] = row["warm_s"] / baseline
    return dict(name=name, path=str(model.path), family=model.family, width=settings.width, height=settings.height,
                steps=settings.steps, guidance=settings.guidance, scheduler=settings.scheduler or "model's own",
                placement=placement, load_s=load_s, rows=rows)


# ---- models ----

def tiny_models(families: list[str], root: Path) -> dict[str, str]:
    """Tiny random-weight pipelines of the families, saved as diffusers folders under root: {family: folder}."""
    sys.path.insert(0, str(REPO_ROOT))  # tests/ is a package at the repository root
    import torch

    from tests.engine.family_fixtures import save_family_pipeline

    folders = {}
    for family in families:
        if family not in TINY_FAMILIES:
            raise SystemExit(f"--tiny builds the families {', '.join(TINY_FAMILIES)}; got {family!r}")
        if family == "sd":  # the engine tests' tiny SD (tests/engine/conftest.py)
            from difflab.train.t2i import new_text_encoder, new_unet, new_vae, save_pipeline
            from difflab.train.t2i_config import T2IConfig
            from difflab.train.tokenizer import build_tokenizer
            from tests.engine.conftest import TINY_T2I

            config = T2IConfig.from_dict(TINY_T2I)
            torch.manual_seed(0)
            tokenizer = build_tokenizer(root / "sd" / "tokenizer-src", config.text_encoder.max_position_embeddings)
            folders[family] = str(save_pipeline(root / "sd" / "pipeline", new_vae(config),
                                                new_text_encoder(config, tokenizer), tokenizer, new_unet(config), config))
        else:
            folders[family] = str(save_family_pipeline(family, root / family))
    return folders


# ---- the table ----

def fmt(value: Optional[float], pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def table(results: list[dict]) -> list[str]:
    lines = ["| model | config | first call s | warm s/image difflab | warm s/image bare | ratio | warm vs baseline "
             "| peak GiB difflab | peak GiB bare | max px diff | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in results:
        for row in model["rows"]:
            if row["status"] != "ok":
                lines.append(f"| {model['name']} | {row['config']} | {row['status']} |  |  |  |  |  |  |  |  |")
                continue
            peak = "n/a (needs CUDA)" if row["peak_gib"] is None else fmt(row["peak_gib"], "{:.2f}")
            peak_bare = "n/a (needs CUDA)" if row["peak_bare_gib"] is None else fmt(row["peak_bare_gib"], "{:.2f}")
            note = "; ".join(filter(None, [row.get("note"), *row["engine_notes"]]))
            lines.append(
                f"| {model['name']} | {row['config']} | {fmt(row['first_call_s'])} | {fmt(row['warm_s'])} "
                f"| {fmt(row['warm_bare_s'])} | {row['ratio']:.3f}x | {fmt(row.get('vs_baseline'), '{:.2f}x')} "
                f"| {peak} | {peak_bare} | {row['max_pixel_difference']}/255 | {note} |")
    return lines


def environment(device: str) -> dict:
    import diffusers
    import torch

    info = dict(torch=torch.__version__, diffusers=diffusers.__version__, device=device, threads=torch.get_num_threads(),
                cpus=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"))
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated presets, folders or hub ids "
                        f"[default sdxl,flux-schnell; with --tiny the families {','.join(TINY_FAMILIES)}]")
    parser.add_argument("--width", type=int, default=None, help="[default: the preset's; 64 with --tiny]")
    parser.add_argument("--height", type=int, default=None, help="[default: the preset's; 64 with --tiny]")
    parser.add_argument("--steps", type=int, default=None, help="[default: the preset's; 2 with --tiny]")
    parser.add_argument("--repeats", type=int, default=5, help="warm calls per side and config, after the first")
    # default, not max-autotune: max-autotune tunes every matmul and conv of the SDXL U-Net and Flux's 12B
    # transformer for many minutes, longer than a device session; pass it when there is time
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    parser.add_argument("--fp32", action="store_true", help="add a row with the pipeline reloaded in float32")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight pipelines at 64x64, 2 steps, on "
                        "whatever device exists: exercises the code path without a GPU")
    parser.add_argument("--compile-on-cpu", action="store_true", help="run the torch.compile row off CUDA too")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-gpu"), help="folder for results.md and .json")
    args = parser.parse_args()

    import torch

    from difflab.engine.registry import ModelNotAvailable, resolve_model

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
                         "run this where a CUDA GPU is present, or pass --tiny for a smoke run of the code path")
    names = (args.models or (",".join(TINY_FAMILIES) if args.tiny else "sdxl,flux-schnell")).split(",")
    tiny_root = Path(tempfile.mkdtemp(prefix="bench-gpu-tiny-")) if args.tiny else None
    references = tiny_models(names, tiny_root) if args.tiny else {name: name for name in names}
    if args.tiny:
        args.width, args.height, args.steps = args.width or 64, args.height or 64, args.steps or 2
    try:  # every model found before any loads: a missing one fails in a second, not after an hour of SDXL
        models = {name: resolve_model(reference) for name, reference in references.items()}
    except ModelNotAvailable as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    sizes = {key: value for key, value in dict(width=args.width, height=args.height, steps=args.steps).items()
             if value is not None}

    results = [bench_model(name, model, {"model": references[name], **sizes}, args) for name, model in models.items()]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(device)
    header = [f"{'tiny random-weight pipelines; ' if args.tiny else ''}torch {env['torch']}, diffusers "
              f"{env['diffusers']}, {env.get('gpu', 'CPU')}, {env['threads']} threads, {env['cpus']} CPUs, "
              f"OMP_NUM_THREADS={env['omp_num_threads']}; {args.repeats} warm calls per side after one first call; "
              f"medians; difflab = engine.pipeline.run, bare = the same pipeline class over the same modules"]
    for model in results:
        header.append(f"- {model['name']} ({model['family']}): {model['width']}x{model['height']}, {model['steps']} "
                      f"steps, scheduler {model['scheduler']}, guidance {model['guidance']}; "
                      f"engine placement {model['placement']}; loaded in {model['load_s']:.1f} s")
    lines = [*header, "", *table(results)]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(dict(environment=env, args={k: str(v) for k, v in vars(args).items()},
                                                           models=results), indent=2) + "\n")
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
