"""Sampler benchmark on the digits model: Frechet distance, class accuracy and time for sampler x steps.

    .venv/bin/python bench/samplers.py [--checkpoint PATH] [--per-class 50] [--guidance 3] [--quick]
                                       [--seed 0] [--samples-dir DIR] [--rows ...] [--out bench/results/samplers.md]

Every row draws the same samples: ``per-class`` of each digit 0..9, sample i seeded ``seed + i`` (see
``difflab.core.generate``), so rows differ only in how the reverse process is integrated. DDPM at 1000 steps,
ancestral sampling on the full training grid (Ho et al. 2020, arXiv:2006.11239), is the reference the others
are measured against. Scores come from ``difflab.eval.digits_metrics``: a fixed pixel-space Frechet distance,
the same distance in a learned feature space (a small CNN's penultimate layer, shipped, trained on the real
digits only), precision and recall in that space, and a fixed SVC; none of them depends on the model sampled.

Targets checked at the end (the few-step sampler is meant to be as good as the 1000-step one):
1. class accuracy >= 90% with dpmpp-2m at 20 steps at guidance 3;
2. dpmpp-2m at 20 steps has FD <= 1.1x the DDPM-1000 FD, in each feature space.

``--samples-dir DIR`` keeps every row's samples, so a later run rescores them without sampling again (DDPM-1000
alone takes 15 to 30 minutes on two cores).

``--quick`` is a smoke test (5 per class, 10 steps, DDPM at 100 as the stand-in reference): it runs in seconds
and its numbers are not the benchmark.

The same table on the bundled tiny-shapes model (A1111 samplers through the engine, the shapes analyzer beside
the Frechet distance): bench/samplers_tiny_shapes.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflab.cli import bundled_digits_checkpoint
from difflab.core.checkpoint import WEIGHTS_NAME, CheckpointError, LoadedModel, load_model
from difflab.core.generate import SampleRequest, sample_images
from difflab.eval.digits_metrics import (
    FEATURE_SPACES,
    DigitScores,
    classifier_holdout_accuracy,
    evaluate_digit_samples,
    noise_floor,
    precision_recall_floor,
)
from difflab.eval.digit_features import shipped_holdout_accuracy
from difflab.viz.samplers import timed_network_calls

DEFAULT_OUT = Path(__file__).parent / "results" / "samplers.md"
FEW_STEP_SAMPLERS = ("ddim", "euler", "euler-ancestral", "heun", "dpmpp-2m", "dpmpp-2m-sde")
ACCURACY_TARGET = 0.90
FD_RATIO_TARGET = 1.1
TARGET_SAMPLER = "dpmpp-2m"


@dataclass(frozen=True)
class Row:
    """One configuration to benchmark."""

    sampler: str
    steps: int
    karras: bool = False

    @property
    def name(self) -> str:
        return f"{self.sampler} (karras)" if self.karras else self.sampler


@dataclass(frozen=True)
class Result:
    row: Row
    scores: DigitScores
    seconds: float  # sampling only, not scoring
    model_calls: int  # U-Net forward passes (one per batch; CFG runs both branches in one pass)
    images: torch.Tensor  # (N, 1, 8, 8) in [-1, 1]


@dataclass(frozen=True)
class Plan:
    """Which rows to run, which is the reference, and which is checked against the targets."""

    rows: tuple[Row, ...]
    reference: Row
    target: Row


def make_plan(quick: bool) -> Plan:
    steps = (10,) if quick else (10, 20, 50)
    reference = Row("ddpm", 100 if quick else 1000)
    rows = [reference]
    if not quick:
        rows.append(Row("ddpm", 50))  # for contrast: ancestral DDPM on a coarse grid
    for sampler in FEW_STEP_SAMPLERS:
        rows += [Row(sampler, n) for n in steps]
    rows += [Row(TARGET_SAMPLER, n, karras=True) for n in steps]
    if not quick:
        # the probability-flow ODE all deterministic samplers approximate, nearly converged: what more steps buy
        rows.append(Row(TARGET_SAMPLER, 100))
    rows.append(Row("diffusers-dpmpp-2m", steps[0] if quick else 20))  # the same solver, diffusers' implementation
    return Plan(tuple(rows), reference, Row(TARGET_SAMPLER, steps[0] if quick else 20))


def diffusers_dpmpp_2m(model: LoadedModel, labels: tuple[int, ...], *, steps: int, guidance: float, seed: int):
    """The baseline: diffusers' own DPMSolverMultistepScheduler driving the same U-Net in a bare loop, with the same
    starting noise (sample i from seed + i) and classifier-free guidance on eps, as diffusers' pipelines do it."""
    import math

    from diffusers import DPMSolverMultistepScheduler

    from difflab.core.samplers import initial_noise

    schedule = model.spec.schedule
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_timesteps, beta_schedule=schedule.name, timestep_spacing="trailing"
    )
    scheduler.set_timesteps(steps)
    config = model.spec.unet
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    shape = (len(labels), config.in_channels, config.image_size, config.image_size)
    sigma_max = float(model.schedule.sigmas[-1])
    latents = initial_noise(shape, sigma_max, generator=generators) / math.sqrt(1 + sigma_max**2)  # DDPM scale
    cond = torch.tensor(labels)
    both_labels = torch.cat([torch.full_like(cond, config.num_classes), cond])
    with torch.inference_mode():
        for t in scheduler.timesteps:
            time_batch = t.float().expand(2 * len(labels))
            eps_uncond, eps_cond = model.model(torch.cat([latents, latents]), time_batch, both_labels).chunk(2)
            latents = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, latents).prev_sample
    return latents.clamp(-1, 1)


def run_row(
    model: LoadedModel, row: Row, labels: tuple[int, ...], *, guidance: float, seed: int,
    samples_dir: Path | None = None,
) -> Result:
    """Draw (or read back from ``samples_dir``) one row's samples and score them."""
    cached = samples_dir / sample_file_name(model, row, labels, guidance, seed) if samples_dir else None
    if cached is not None and cached.exists():
        with np.load(cached) as stored:
            images = torch.from_numpy(stored["images"])
            seconds, calls = float(stored["seconds"]), int(stored["model_calls"])
        return Result(row, evaluate_digit_samples(images, labels), seconds, calls, images)
    result = _draw_row(model, row, labels, guidance=guidance, seed=seed)
    if cached is not None:
        save_samples(cached, result)
    return result


def sample_file_name(model: LoadedModel, row: Row, labels: tuple[int, ...], guidance: float, seed: int) -> str:
    """A name that changes with anything that changes the samples: the weights, the row, labels, guidance, seeds."""
    weights = hashlib.sha256((model.path / WEIGHTS_NAME).read_bytes()).hexdigest()[:12]
    what = hashlib.sha256(repr((labels, guidance, seed)).encode()).hexdigest()[:12]
    karras = "-karras" if row.karras else ""
    return f"{weights}-{row.sampler}-{row.steps}{karras}-{what}.npz"


def save_samples(path: Path, result: Result) -> None:
    """Write atomically: a run killed half-way never leaves a truncated file that a later run would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, images=result.images.numpy(), seconds=result.seconds, model_calls=result.model_calls)
    os.replace(partial, path)


def _draw_row(model: LoadedModel, row: Row, labels: tuple[int, ...], *, guidance: float, seed: int) -> Result:
    if row.sampler == "diffusers-dpmpp-2m":
        return _timed(model, row, labels, lambda: diffusers_dpmpp_2m(model, labels, steps=row.steps,
                                                                     guidance=guidance, seed=seed))
    request = SampleRequest(
        labels=labels, sampler=row.sampler, steps=row.steps, guidance=guidance, seed=seed, karras=row.karras
    )
    return _timed(model, row, labels, lambda: sample_images(model, request))


def _timed(model: LoadedModel, row: Row, labels: tuple[int, ...], draw) -> Result:
    images, seconds, calls = timed_network_calls(model.model, draw)  # images: (N, 1, 8, 8) in [-1, 1]
    return Result(row, evaluate_digit_samples(images, labels), seconds, calls, images)


def format_table(results: list[Result], reference: Result, n: int) -> str:
    floors = {space: (noise_floor(n, space=space), noise_floor(space=space)) for space in ("pixels", "learned")}
    pr_floor = precision_recall_floor()
    ref = f"ddpm-{reference.row.steps}"
    lines = [
        f"| sampler | steps | model calls | FD pixels | FD pixels / {ref} | FD learned | FD learned / {ref} "
        "| precision | recall | class accuracy | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        scores, ref_scores = result.scores, reference.scores
        lines.append(
            f"| {result.row.name} | {result.row.steps} | {result.model_calls} | {scores.frechet:.2f} "
            f"| {_ratio(scores.frechet, ref_scores.frechet):.2f} | {scores.frechet_learned:.2f} "
            f"| {_ratio(scores.frechet_learned, ref_scores.frechet_learned):.2f} | {scores.precision:.3f} "
            f"| {scores.recall:.3f} | {scores.accuracy:.1%} | {result.seconds:.1f} |"
        )
    (pix_n, pix_half), (learned_n, learned_half) = floors["pixels"], floors["learned"]
    lines.append(
        f"| *noise floor: {pix_n.n} real digits vs all* | | | {pix_n.frechet:.2f} ± {pix_n.spread:.2f} | | "
        f"{learned_n.frechet:.2f} ± {learned_n.spread:.2f} | | | | | |"
    )
    lines.append(
        f"| *noise floor: real half vs half ({pix_half.n})* | | | {pix_half.frechet:.2f} ± {pix_half.spread:.2f} "
        f"| | {learned_half.frechet:.2f} ± {learned_half.spread:.2f} | | {pr_floor.precision:.3f} ± "
        f"{pr_floor.precision_spread:.3f} | {pr_floor.recall:.3f} ± {pr_floor.recall_spread:.3f} | | |"
    )
    return "\n".join(lines)


def _ratio(frechet: float, reference_frechet: float) -> float:
    return frechet / reference_frechet if reference_frechet > 0 else float("inf")


def check_targets(results: list[Result], plan: Plan, *, guidance: float, quick: bool) -> list[str]:
    by_row = {result.row: result for result in results}
    target, reference = by_row[plan.target], by_row[plan.reference]
    label = f"{plan.target.sampler} {plan.target.steps} steps"
    accuracy_pass = target.scores.accuracy >= ACCURACY_TARGET
    lines = [
        f"- {'PASS' if accuracy_pass else 'FAIL'}: class accuracy >= {ACCURACY_TARGET:.0%} with {label} at "
        f"guidance {guidance:g}: {target.scores.accuracy:.1%}",
    ]
    for space, ours, theirs in (
        ("pixels", target.scores.frechet, reference.scores.frechet),
        ("learned", target.scores.frechet_learned, reference.scores.frechet_learned),
    ):
        ratio = _ratio(ours, theirs)
        lines.append(
            f"- {'PASS' if ratio <= FD_RATIO_TARGET else 'FAIL'}: {label} FD ({space}) <= {FD_RATIO_TARGET}x "
            f"ddpm {plan.reference.steps} steps FD: {ours:.2f} vs {theirs:.2f} ({ratio:.2f}x)"
        )
    if quick:
        lines.append("- (quick run: stand-in rows and too few samples; these verdicts mean nothing)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--per-class", type=int, help="samples per digit (default 50; 5 with --quick)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="sample i is seeded seed + i in every row")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; not the benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    parser.add_argument("--samples-dir", type=Path,
                        help="keep each row's samples here and reuse them on later runs (rescoring without "
                             "resampling; the file name carries the weights' hash, row, labels, guidance, seeds)")
    parser.add_argument("--rows", help="only these rows, e.g. 'ddpm:1000,dpmpp-2m:20' (the reference and the "
                                       "target row are always kept)")
    args = parser.parse_args(argv)
    per_class = args.per_class if args.per_class is not None else (5 if args.quick else 50)
    if per_class < 1:
        parser.error(f"--per-class must be >= 1; got {per_class}")

    # 1. Load the model
    checkpoint = args.checkpoint if args.checkpoint is not None else bundled_digits_checkpoint()
    try:
        model = load_model(checkpoint)
    except CheckpointError as error:
        hint = " (no bundled model yet: train it, or pass --checkpoint)" if args.checkpoint is None else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    num_classes = model.spec.unet.num_classes
    if num_classes is None:
        print(f"error: checkpoint {str(checkpoint)!r} is unconditional; the benchmark needs class labels",
              file=sys.stderr)
        return 2

    # 2. Same labels and seeds for every row
    labels = tuple(digit for digit in range(num_classes) for _ in range(per_class))
    plan = make_plan(args.quick)
    if args.rows:
        wanted = {tuple(item.strip().split(":")) for item in args.rows.split(",") if item.strip()}
        keep = [row for row in plan.rows
                if (row.sampler, str(row.steps)) in wanted or row in (plan.reference, plan.target)]
        plan = Plan(tuple(keep), plan.reference, plan.target)

    # 3. Sample and score each row
    results = []
    for row in plan.rows:
        result = run_row(model, row, labels, guidance=args.guidance, seed=args.seed, samples_dir=args.samples_dir)
        print(
            f"{row.name:>20} {row.steps:>5} steps: FD {result.scores.frechet:8.2f}  "
            f"learned {result.scores.frechet_learned:8.2f}  P {result.scores.precision:.3f}  "
            f"R {result.scores.recall:.3f}  accuracy {result.scores.accuracy:6.1%}  {result.seconds:6.1f} s",
            file=sys.stderr,
        )
        results.append(result)

    # 4. Report
    reference = next(result for result in results if result.row == plan.reference)
    report = "\n".join(
        [
            f"# Samplers on {checkpoint}" + (" (--quick smoke test)" if args.quick else ""),
            "",
            f"{len(labels)} samples ({per_class} per digit), guidance {args.guidance:g}, seeds {args.seed}.."
            f"{args.seed + len(labels) - 1}, the same in every row; trailing timestep spacing; "
            f"torch {torch.__version__} on CPU (threads: {torch.get_num_threads()}).",
            "",
            format_table(results, reference, len(labels)),
            "",
            f"Feature spaces for FD: pixels = {FEATURE_SPACES['pixels']}; learned = {FEATURE_SPACES['learned']} "
            "(difflab.eval.digit_features; its recipe scores "
            f"{shipped_holdout_accuracy():.1%} on the held-out 25% split). FD is against all 1,797 real "
            f"digits (difflab.eval.digits_metrics). FD / ddpm-{plan.reference.steps} is relative to that row. "
            "Precision and recall: Kynkaanniemi et al. 2019, k = 3 nearest-neighbour balls in the learned space, "
            "samples against all 1,797 real digits (difflab.eval.precision_recall). "
            f"Class accuracy: SVC(gamma=0.001, C=10) on the same pixels, trained on all real digits "
            f"({classifier_holdout_accuracy():.1%} on a held-out 25% split). Model calls count U-Net passes; "
            "each runs both guidance branches as one batch. Noise floors: real digits scored like samples "
            "(mean ± std over 10 random draws).",
            "",
            "Targets:",
            *check_targets(results, plan, guidance=args.guidance, quick=args.quick),
            "",
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
