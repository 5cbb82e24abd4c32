"""bench/samplers.py's sampler table on the bundled tiny-shapes model (issue 25): Frechet distance, precision,
recall and the shapes analyzer's adherence for A1111 sampler x steps, against DDPM at 1000 steps.

    .venv/bin/python bench/samplers_tiny_shapes.py [--images 64] [--real 1000] [--seed 7] [--quick]
                                                   [--rows "DPM++ 2M:20,..."] [--out bench/results/samplers-tiny-shapes.md]

Every row draws the same ``--images`` requests through the engine (``engine.pipeline.run_merged``: one pipeline
call per row, request j is full caption j of ``eval.t2i.full_prompts`` drawn with seed ``seed + j``), at the
preset's defaults other than the sampler and step count: 64x64, guidance 7.5 on the first 70% of the steps. Rows
differ only in how the reverse process is integrated; DDPM at 1000 steps (ancestral sampling on the full
training grid) is the reference, as in the digits table.

Scores (none depends on the model sampled):
- FD pixels: Frechet distance of 8x8 block means of RGB (0..1) projected on the real images' first principal
  directions (24, or half the images a row), against ``--real`` rendered training images (data.shapes.ShapesDataset,
  the distribution the model was trained on); with the noise floor of as many real images against the rest.
- precision / recall (Kynkaenniemi et al. 2019, k = 3) in the same space.
- shape+colour, all fields: the deterministic analyzer (eval.adherence) reading each image against its prompt.

``--quick`` is a smoke test (8 images, DDPM at 50 as the stand-in reference, two rows): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_OUT = Path(__file__).parent / "results" / "samplers-tiny-shapes.md"
REFERENCE = ("DDPM", 1000)
TARGET = ("DPM++ 2M", 20)
ROWS = (REFERENCE, ("DDPM", 50), ("DDIM", 20), ("Euler a", 20), ("Euler", 20), ("Heun", 10),
        ("DPM++ 2M", 10), TARGET, ("DPM++ 2M", 50), ("DPM++ 2M Karras", 10), ("DPM++ 2M Karras", 20),
        ("DPM++ 2M SDE", 10), ("DPM++ 2M SDE", 20))
FD_RATIO_TARGET = 1.1
POOL = 8  # 64x64 -> 8x8 blocks: 192 numbers an image, before the projection below
COMPONENTS = 24  # principal directions kept (at most half the images a row): a covariance estimable from them


@dataclass(frozen=True)
class Scores:
    frechet: float
    precision: float
    recall: float
    shape_and_color: float
    all_fields: float


def features(images: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 or float 0..255 -> (N, 192) in 0..1: the mean of each 8x8 block, per channel."""
    n, height, width, channels = images.shape
    blocks = images.reshape(n, POOL, height // POOL, POOL, width // POOL, channels).astype(np.float64)
    return blocks.mean(axis=(2, 4)).reshape(n, -1) / 255


class FeatureSpace:
    """8x8 block means projected on the first ``COMPONENTS`` principal directions of the real images' block means:
    few enough dimensions for a covariance from tens of samples; fitted on real images only, so it does not
    depend on the model sampled."""

    def __init__(self, real: np.ndarray, components: int = 24):
        blocks = features(real)
        self.mean = blocks.mean(axis=0)
        _, singular, directions = np.linalg.svd(blocks - self.mean, full_matrices=False)
        self.directions = directions[:components]  # (K, 192)
        variances = singular**2
        self.explained = float(variances[:components].sum() / variances.sum())

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return (features(images) - self.mean) @ self.directions.T  # (N, K)


def real_images(count: int, seed: int) -> np.ndarray:
    """``count`` rendered training images (N, 64, 64, 3) in 0..255."""
    from difflab.data.shapes import ShapesDataset

    dataset = ShapesDataset(count, seed)
    stacked = torch.stack([dataset[i]["image"] for i in range(count)])  # (N, 3, 64, 64) in [-1, 1]
    return ((stacked.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255)


def score(images: np.ndarray, prompts: list[str], real: np.ndarray, space: FeatureSpace) -> Scores:
    from difflab.eval.adherence import score as adherence
    from difflab.eval.frechet import frechet_distance
    from difflab.eval.precision_recall import precision_recall

    generated, reference = space(images), space(real)
    pr = precision_recall(reference, generated)
    report = adherence(list(images.astype(np.uint8)), prompts)
    every = np.mean([all(getattr(reading, name) == getattr(asked, name) for name in asked.specified())
                     for reading, asked in zip(report.readings, _parsed(prompts))])
    return Scores(frechet_distance(generated, reference), pr.precision, pr.recall,
                  report.shape_and_color_accuracy or 0.0, float(every))


def _parsed(prompts: list[str]):
    from difflab.data.shapes import parse_prompt

    return [parse_prompt(prompt) for prompt in prompts]


def draw(sampler: str, steps: int, prompts: list[str], seed: int, cache) -> tuple[np.ndarray, float, int]:
    """One row: every prompt in one merged pipeline call. Returns (N, 64, 64, 3) uint8, seconds, U-Net calls."""
    from difflab.engine.pipeline import run_merged
    from difflab.engine.request import build_request

    requests = [build_request(prompt=prompt, seed=seed + j, scheduler=sampler, steps=steps)
                for j, prompt in enumerate(prompts)]
    pipeline, _ = cache.get(_model())
    calls = {"n": 0}
    hook = pipeline.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        started = time.perf_counter()
        results = run_merged(requests, cache)
        seconds = time.perf_counter() - started
    finally:
        hook.remove()
    return np.stack([np.asarray(result.images[0]) for result in results]), seconds, calls["n"]


def _model():
    from difflab.engine.registry import resolve_model

    return resolve_model("tiny-shapes", False)


def noise_floor(real: np.ndarray, n: int, space: FeatureSpace, draws: int = 10) -> tuple[float, float, float, float]:
    """FD, precision and recall of ``n`` real images against the rest, mean over random draws: (FD, its std,
    precision, recall)."""
    from difflab.eval.frechet import frechet_distance
    from difflab.eval.precision_recall import precision_recall

    rng = np.random.default_rng(0)
    fds, precisions, recalls = [], [], []
    for _ in range(draws):
        pick = rng.permutation(len(real))
        sample, rest = space(real[pick[:n]]), space(real[pick[n:]])
        fds.append(frechet_distance(sample, rest))
        pr = precision_recall(rest, sample)
        precisions.append(pr.precision)
        recalls.append(pr.recall)
    return float(np.mean(fds)), float(np.std(fds)), float(np.mean(precisions)), float(np.mean(recalls))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="images a row (default 64; 8 with --quick)")
    parser.add_argument("--real", type=int, default=1000, help="rendered training images to compare against")
    parser.add_argument("--seed", type=int, default=7, help="request j is seeded seed + j in every row")
    parser.add_argument("--quick", action="store_true", help="smoke test; not the benchmark")
    parser.add_argument("--rows", help="only these rows, e.g. 'DPM++ 2M:10,Euler a:20' (reference and target kept)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from difflab.engine.pipeline import PipelineCache
    from difflab.eval.t2i import full_prompts

    n = args.images if args.images is not None else (8 if args.quick else 64)
    if not 4 <= n <= 512:
        parser.error(f"--images must be between 4 and 512; got {n}")
    reference = ("DDPM", 50) if args.quick else REFERENCE
    rows = [reference, TARGET] if args.quick else list(ROWS)
    if args.rows:
        wanted = {(name.rsplit(":", 1)[0].strip(), int(name.rsplit(":", 1)[1])) for name in args.rows.split(",")}
        rows = [row for row in rows if row in wanted or row in (reference, TARGET)]
    pairs = 16  # base shapes x colours
    prompts = full_prompts(per_pair=-(-n // pairs), seed=args.seed)[:n]
    real = real_images(args.real, seed=args.seed + 1000)
    components = min(COMPONENTS, n // 2)
    space = FeatureSpace(real, components)
    explained = space.explained
    cache = PipelineCache()

    results = []
    for sampler, steps in rows:
        images, seconds, calls = draw(sampler, steps, prompts, args.seed, cache)
        scores = score(images, prompts, real, space)
        results.append((sampler, steps, calls, seconds, scores))
        print(f"{sampler:>16} {steps:>5}: FD {scores.frechet:8.1f}  P {scores.precision:.3f}  R {scores.recall:.3f}  "
              f"shape+colour {scores.shape_and_color:.1%}  all {scores.all_fields:.1%}  {seconds:.0f} s",
              file=sys.stderr, flush=True)
    ref = next(scores for sampler, steps, _, _, scores in results if (sampler, steps) == reference)
    floor_fd, floor_spread, floor_p, floor_r = noise_floor(real, n, space)
    name = f"{reference[0]}-{reference[1]}"
    lines = [
        "# Samplers on the bundled tiny-shapes model" + (" (--quick smoke test)" if args.quick else ""), "",
        f"{n} images a row (full captions cycling every shape x colour, request j seeded {args.seed} + j, the same "
        f"in every row), 64x64, guidance 7.5 on the first 70% of the steps (the preset's), one merged pipeline "
        f"call a row; torch {torch.__version__} on CPU ({torch.get_num_threads()} threads).", "",
        f"| sampler | steps | model calls | FD pixels | FD / {name} | precision | recall | shape+colour "
        "| all fields | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sampler, steps, calls, seconds, scores in results:
        lines.append(f"| {sampler} | {steps} | {calls} | {scores.frechet:.1f} | {scores.frechet / ref.frechet:.2f} "
                     f"| {scores.precision:.3f} | {scores.recall:.3f} | {scores.shape_and_color:.1%} "
                     f"| {scores.all_fields:.1%} | {seconds:.0f} |")
    lines.append(f"| *noise floor: {n} real vs the other {args.real - n}* | | | {floor_fd:.1f} ± {floor_spread:.1f} "
                 f"| | {floor_p:.3f} | {floor_r:.3f} | | | |")
    target = next(scores for sampler, steps, _, _, scores in results if (sampler, steps) == TARGET)
    ratio = target.frechet / ref.frechet
    lines += ["", "Model calls count U-Net passes (each runs both guidance branches as one batch while guided). "
              f"FD pixels: 8x8 block means of RGB (192 numbers, 0..1) projected on the first {components} "
              f"principal directions of the real images' ({explained:.0%} of their variance), against "
              f"{args.real} rendered training images (data.shapes, seed {args.seed + 1000}); precision/recall: k = 3 "
              "in that space. Shape+colour "
              "and all fields: eval.adherence's analyzer against each prompt.", "", "Target:",
              f"- {'PASS' if ratio <= FD_RATIO_TARGET else 'FAIL'}: {TARGET[0]} at {TARGET[1]} steps FD <= "
              f"{FD_RATIO_TARGET}x {name}'s: {target.frechet:.1f} vs {ref.frechet:.1f} ({ratio:.2f}x)", "",
              f"Command: `.venv/bin/python bench/samplers_tiny_shapes.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`"]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from difflab.io.atomic import atomic_write_bytes

    atomic_write_bytes(args.out, report.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
