"""torch.compile where it pays: eager against compiled, per image and per training step, on tiny-shapes.

    .venv/bin/python bench/compile.py [--sections inference,ddpm,t2i] [--images 6] [--steps 6] [--threads 2]
                                      [--out bench/results/compile.md]

Every row runs in a fresh Python process (so nothing compiled stays in memory between rows) with its own
Inductor cache folder (``DIFFLAB_COMPILE_CACHE``):

- inference (``difflab batch/serve --compile``'s path: ``PipelineCache(compile=True)`` and ``engine.pipeline.run``
  on the bundled tiny-shapes model at its defaults, 64x64, 20 DPM++ 2M steps, guidance on the first 70%): eager;
  compiled with an empty cache (the first process ever); compiled again on the folder the previous row filled (a
  later process). Reported: the first image (load excluded); then ``--images`` images drawn alternately by an
  eager and the compiled pipeline in the same process (so both see the same load: the machine is shared), their
  medians and the largest pixel difference; and the number of images after which compiling has paid for
  itself: extra first-image seconds / seconds saved per image.
- ddpm: one step of ``difflab ddpm train``'s loop (core U-Net at its CLI defaults on 8x8 digits, batch 128,
  AdamW), eager and compiled (forward and backward), empty cache; later steps interleaved eager / compiled.
- t2i: one U-Net step of ``difflab train t2i`` (configs/tiny-shapes.toml's U-Net, 16x16x4 latents, batch 32,
  text states of 32 tokens, AdamW), eager and compiled, empty cache. LoRA and ControlNet training run the same
  U-Net forward and backward with fewer trained weights.

The VAE decoder's share of an eager image is measured too: it bounds what compiling the decoder could save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "results" / "compile.md"
PROMPTS = ("a red circle on a blue background", "a green square on the left, white background",
           "a small yellow triangle at the top, black background", "a blue star on a red background")


# --- children: each runs in its own process and prints one JSON line ---------------------------------------------


def child_inference(compiled: bool, images: int) -> dict:
    """Eager: load, the first image, then ``images`` more. Compiled: the same with a compiled U-Net, then
    ``images`` more drawn alternately by an eager and the compiled pipeline (same requests, same load on the
    machine: a fair per-image ratio, and the pixel difference)."""
    import numpy as np
    import torch

    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.registry import resolve_model
    from difflab.engine.request import build_request

    def request(index: int):
        return build_request(prompt=PROMPTS[index % len(PROMPTS)], seed=index)

    def timed(cache, index: int):
        started = time.perf_counter()
        result = run(request(index), cache)
        return time.perf_counter() - started, np.asarray(result.images[0]).astype(np.int16)

    started = time.perf_counter()
    cache = PipelineCache(compile=compiled)
    pipeline, _ = cache.get(resolve_model("tiny-shapes", False))
    out = {"load_s": time.perf_counter() - started}
    out["first_s"], _ = timed(cache, 0)
    if not compiled:
        out["next_s"] = [timed(cache, index)[0] for index in range(1, images + 1)]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        decode = []
        with torch.inference_mode():  # the VAE decoder's share of an image: what compiling it could save at most
            for _ in range(images + 1):
                started = time.perf_counter()
                pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor)
                decode.append(time.perf_counter() - started)
        out["vae_decode_s"] = statistics.median(decode[1:])
        return out
    eager = PipelineCache()
    eager.get(resolve_model("tiny-shapes", False))
    timed(eager, 0)  # its own warm-up
    out["eager_next_s"], out["next_s"], difference = [], [], 0
    for index in range(1, images + 1):
        eager_s, want = timed(eager, index)
        compiled_s, got = timed(cache, index)
        out["eager_next_s"].append(eager_s)
        out["next_s"].append(compiled_s)
        difference = max(difference, int(np.abs(got - want).max()))
    out["max_difference"] = difference
    return out


def _digits_step(model, optimizer, data, schedule, config, index: int) -> float:
    """One step of core.train's loop (batch, noise, loss, AdamW), timed without the data drawing."""
    import torch

    from difflab.core.process import diffusion_loss, q_sample
    from difflab.core.train import optimizer_step

    generator = torch.Generator().manual_seed(index)
    pick = torch.randint(0, len(data), (config.batch_size,), generator=generator)
    x_0, labels = data.images[pick], data.labels[pick]
    t = torch.randint(0, schedule.num_timesteps, (config.batch_size,), generator=generator)
    eps = torch.randn(x_0.shape, generator=generator)
    started = time.perf_counter()
    output = model(q_sample(schedule, x_0, t, eps), t.float(), labels)
    loss = diffusion_loss(schedule, config.prediction, output, x_0, t, eps)
    optimizer_step(optimizer, loss, model.parameters(), index, config)
    loss.item()
    return time.perf_counter() - started


def child_ddpm(compiled: bool, steps: int) -> dict:
    from difflab.core.checkpoint import ScheduleSpec
    from difflab.core.train import TrainConfig, new_state
    from difflab.core.unet import UNetConfig
    from difflab.data.digits import load_digits

    data = load_digits()
    config = TrainConfig(steps=steps + 1, batch_size=128)  # `difflab ddpm train`'s defaults
    unet_config = UNetConfig(image_size=8, in_channels=1, out_channels=1, base_channels=32, num_classes=10)
    schedule = ScheduleSpec(config.schedule, config.num_timesteps).build()
    states = {"eager": new_state(unet_config, config)}
    if compiled:
        states["compiled"] = new_state(unet_config, config)
        states["compiled"].model.compile()

    def step(name: str, index: int) -> float:
        state = states[name]
        return _digits_step(state.model, state.optimizer, data, schedule, config, index)

    return _interleaved(step, compiled, steps)


def child_t2i(compiled: bool, steps: int) -> dict:
    import torch

    from difflab.train.t2i import new_unet
    from difflab.train.t2i_config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / "tiny-shapes.toml")
    batch, tokens = config.unet_training.batch_size, config.text_encoder.max_position_embeddings
    width = config.text_encoder.hidden_size
    models = {}
    for name in ("eager", "compiled") if compiled else ("eager",):
        torch.manual_seed(0)
        unet = new_unet(config).train()
        if name == "compiled":
            unet.compile()
        models[name] = (unet, torch.optim.AdamW(unet.parameters(), lr=config.unet_training.learning_rate))

    def step(name: str, index: int) -> float:
        unet, optimizer = models[name]
        generator = torch.Generator().manual_seed(index)
        z_t = torch.randn(batch, 4, 16, 16, generator=generator)
        text = torch.randn(batch, tokens, width, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        target = torch.randn(batch, 4, 16, 16, generator=generator)
        started = time.perf_counter()
        loss = torch.nn.functional.mse_loss(unet(z_t, t, encoder_hidden_states=text).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        return time.perf_counter() - started

    return _interleaved(step, compiled, steps)


def _interleaved(step, compiled: bool, steps: int) -> dict:
    """The first step of the measured model (eager, or compiled: compiling), then ``steps`` rounds; with a
    compiled model every round runs one eager and one compiled step, so both see the same load."""
    name = "compiled" if compiled else "eager"
    out = {"first_s": step(name, 0)}
    if compiled:
        step("eager", 0)  # the eager twin's own first step
    out["next_s"], out["eager_next_s"] = [], []
    for index in range(1, steps + 1):
        if compiled:
            out["eager_next_s"].append(step("eager", index))
        out["next_s"].append(step(name, index))
    return out


def run_child(section: str, compiled: bool, cache: Path, count: int, threads: int) -> dict:
    """One measurement in a fresh process; its JSON answer."""
    env = {**os.environ, "DIFFLAB_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache),
           "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", section, "--count", str(count), "--threads", str(threads)]
    if compiled:
        command.append("--compiled")
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{section} child failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    answer["process_s"] = time.perf_counter() - started
    print(f"{section} {'compiled' if compiled else 'eager'} ({cache.name}): {answer}", file=sys.stderr, flush=True)
    return answer


# --- the report ---------------------------------------------------------------------------------------------------


def pays_after(extra_first: float, eager_each: float, compiled_each: float) -> str:
    saved = eager_each - compiled_each
    if saved <= 0:
        return "never (no saving per item)"
    return f"{extra_first / saved:,.0f}"


def inference_section(images: int, threads: int, work: Path) -> list[str]:
    eager = run_child("inference", False, work / "eager-cache", images, threads)
    cold = run_child("inference", True, work / "compile-cache", images, threads)
    warm = run_child("inference", True, work / "compile-cache", images, threads)
    lines = ["## Inference: `difflab batch --compile` / `difflab serve --compile` on tiny-shapes", "",
             f"One image a request, 64x64, 20 steps DPM++ 2M, guidance 7.5 on the first 70% of the steps; {threads} "
             f"threads; each row a fresh process. Later images: {images} drawn alternately by an eager and the "
             "compiled pipeline in the compiled row's process (medians; the same requests under the same load).", "",
             "| row | load s | first image s | later images s, eager / compiled (median) | compiled / eager "
             "| extra first-image s | pays after images | max pixel difference from eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| eager | {eager['load_s']:.1f} | {eager['first_s']:.2f} | {statistics.median(eager['next_s']):.3f} "
             "| 1.00x | 0 | | 0/255 |"]
    for name, row in (("compiled, empty cache (first process)", cold), ("compiled, warm cache (later process)", warm)):
        eager_each, each = statistics.median(row["eager_next_s"]), statistics.median(row["next_s"])
        extra = row["first_s"] - eager["first_s"]
        lines.append(f"| {name} | {row['load_s']:.1f} | {row['first_s']:.2f} | {eager_each:.3f} / {each:.3f} "
                     f"| {each / eager_each:.2f}x | {extra:.1f} | {pays_after(extra, eager_each, each)} "
                     f"| {row['max_difference']}/255 |")
    decode, eager_each = eager["vae_decode_s"], statistics.median(eager["next_s"])
    lines += ["", f"VAE decode of one 16x16x4 latent (eager): {decode * 1000:.1f} ms, {decode / eager_each:.1%} "
                  "of an eager image: compiling the decoder could save at most that share, so only the U-Net is "
                  "compiled."]
    return lines


def training_section(section: str, title: str, steps: int, threads: int, work: Path) -> list[str]:
    eager = run_child(section, False, work / f"{section}-eager-cache", steps, threads)
    compiled = run_child(section, True, work / f"{section}-compile-cache", steps, threads)
    eager_each, each = statistics.median(compiled["eager_next_s"]), statistics.median(compiled["next_s"])
    extra = compiled["first_s"] - eager["first_s"]
    return [f"## Training: {title}", "",
            f"{threads} threads; each row a fresh process, empty cache. Later steps: {steps} rounds of one eager "
            "and one compiled step (same batches, same load) in the compiled row's process, medians.", "",
            "| row | first step s | later steps s, eager / compiled (median) | compiled / eager "
            "| extra first-step s | pays after steps |", "|---|---:|---:|---:|---:|---:|",
            f"| eager | {eager['first_s']:.2f} | {statistics.median(eager['next_s']):.3f} | 1.00x | 0 | |",
            f"| compiled, empty cache | {compiled['first_s']:.1f} | {eager_each:.3f} / {each:.3f} "
            f"| {each / eager_each:.2f}x | {extra:.1f} | {pays_after(extra, eager_each, each)} |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="inference,ddpm,t2i", help="comma-separated: inference, ddpm, t2i")
    parser.add_argument("--images", type=int, default=6, help="images timed after the first (inference)")
    parser.add_argument("--steps", type=int, default=6, help="steps timed after the first (training)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        if args.child == "inference":
            answer = child_inference(args.compiled, args.count)
        elif args.child == "ddpm":
            answer = child_ddpm(args.compiled, args.count)
        else:
            answer = child_t2i(args.compiled, args.count)
        print(json.dumps(answer))
        return 0

    import torch

    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(sections) - {"inference", "ddpm", "t2i"}
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}; allowed: inference, ddpm, t2i")
    lines = ["# torch.compile: what it costs and when it pays (issue 25)", "",
             f"torch {torch.__version__}, {platform.machine()} ({os.cpu_count()} CPUs seen), "
             f"load average at the start {', '.join(f'{x:.1f}' for x in os.getloadavg())}.", ""]
    with tempfile.TemporaryDirectory(prefix="difflab-compile-bench-") as folder:
        work = Path(folder)
        if "inference" in sections:
            lines += inference_section(args.images, args.threads, work) + [""]
        if "ddpm" in sections:
            lines += training_section("ddpm", "`difflab ddpm train` (core U-Net, 8x8 digits, batch 128)",
                                      args.steps, args.threads, work) + [""]
        if "t2i" in sections:
            lines += training_section("t2i", "`difflab train t2i` U-Net phase (tiny-shapes U-Net, batch 32)",
                                      args.steps, args.threads, work) + [""]
    lines += [f"Load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
              f"Command: `.venv/bin/python bench/compile.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from difflab.io.atomic import atomic_write_bytes

    atomic_write_bytes(args.out, report.encode())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
