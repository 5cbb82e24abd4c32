"""``difflab eval``: measure a text-to-image model on the shapes world. Thin: parse, call difflab.eval.t2i, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

eval_app = typer.Typer(help="Measure text-to-image models: prompt adherence, guidance trade-off, negative prompts.",
                       no_args_is_help=True)

MODEL_HELP = "Preset, diffusers folder or .safetensors file."


def _settings(steps: Optional[int], scheduler: Optional[str]) -> dict:
    return {k: v for k, v in dict(steps=steps, scheduler=scheduler).items() if v is not None}


def _check(model: str, prompt: str = "check", **settings) -> None:
    """Validate the settings and find the model before any generation or output: bad input fails first."""
    from difflab.engine.registry import resolve_model
    from difflab.engine.request import build_request

    resolve_model(build_request(prompt=prompt, model=model, **settings).model)


def _json(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def _write_files(out: Path, files: dict[str, bytes]) -> None:
    """The report's files, each replaced atomically; if the folder fails now, they go to a rescue folder."""
    from difflab.output_files import save_named_files

    save_named_files(out, files)


@eval_app.command("adherence")
def adherence_command(
    model: str = typer.Option("tiny-shapes", help=MODEL_HELP),
    per_pair: int = typer.Option(2, min=1, max=64, help="Prompts per shape x colour pair (32 pairs); with "
                                 "--prompts short, images per short prompt."),
    prompts_kind: str = typer.Option("full", "--prompts", help="full: captions naming every field, drawn from "
                                     "--seed; short: 'a red circle', the rest left to the model."),
    guidance: float = typer.Option(7.5, min=0.0),
    guidance_end: Optional[float] = typer.Option(None, help="Fraction of the steps that use guidance, (0, 1] "
                                                 "[the model's]."),
    steps: int = typer.Option(20, min=1, max=1000),
    scheduler: str = typer.Option("DPM++ 2M", help="A1111 sampler name."),
    seed: int = typer.Option(0, min=0),
    out: Path = typer.Option(Path("outputs/eval-adherence"), "--out", "-o", help="Report, grid and images."),
) -> None:
    """Shape, colour, position, size and background accuracy over every base shape x colour, read back by the
    deterministic analyzer (no learned judge)."""
    from difflab.cli import check_output, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.eval import t2i
        from difflab.viz.grid import make_grid, png_bytes

        if prompts_kind not in ("full", "short"):
            raise ValueError(f"prompts must be full or short, got {prompts_kind!r}")
        settings = dict(guidance=guidance, steps=steps, scheduler=scheduler)
        if guidance_end is not None:
            settings["guidance_end"] = guidance_end
        _check(model, **settings)
        check_output(out)
        quiet_libraries()
        total = per_pair * 32
        with progress_bar("adherence") as progress:
            task = progress.add_task("generating", total=total, info=model)
            measure = t2i.adherence if prompts_kind == "full" else t2i.short_adherence
            count = {"per_pair": per_pair} if prompts_kind == "full" else {"seeds_per_prompt": per_pair}
            report, prompts, images = measure(model, seed=seed, progress=lambda k: progress.advance(task, k),
                                              **count, **settings)
        _write_files(out, {"grid.png": png_bytes(make_grid(images, columns=16, scale=2)), "report.json": _json({
            "model": model, "prompts_kind": prompts_kind, "guidance": guidance, "guidance_end": guidance_end,
            "steps": steps, "scheduler": scheduler, "seed": seed,
            "n_images": report.n_images, "accuracy": report.accuracy,
            "shape+color": report.shape_and_color_accuracy,
            "shape_confusion": [[a, r, n] for (a, r), n in sorted(report.shape_confusion.items(), key=str)],
            "prompts": prompts,
        })})
        typer.echo(report.table())
        typer.echo(f"grid: {out / 'grid.png'}\nreport: {out / 'report.json'}")

    run()


@eval_app.command("guidance-sweep")
def guidance_sweep_command(
    model: str = typer.Option("tiny-shapes", help=MODEL_HELP),
    guidances: str = typer.Option("1,3,7.5,15", help="Comma-separated guidance scales."),
    seeds: int = typer.Option(4, min=2, max=64, help="Seeds per prompt (diversity needs at least 2)."),
    steps: int = typer.Option(20, min=1, max=1000),
    scheduler: str = typer.Option("DPM++ 2M"),
    seed: int = typer.Option(0, min=0),
    out: Path = typer.Option(Path("outputs/guidance-sweep"), "--out", "-o"),
) -> None:
    """Classifier-free guidance trade-off: adherence and diversity side by side per scale, and the image grid."""
    from difflab.cli import check_output, comma_numbers, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.eval import t2i
        from difflab.viz.grid import png_bytes

        scales = comma_numbers(guidances, "guidances", 0.0, 999.0)
        _check(model, steps=steps, scheduler=scheduler)
        check_output(out)
        quiet_libraries()
        prompts = t2i.minimal_prompts()
        with progress_bar("guidance sweep") as progress:
            task = progress.add_task("generating", total=len(scales) * len(prompts) * seeds, info=model)
            result = t2i.guidance_sweep(model, scales, seeds_per_prompt=seeds, seed=seed, steps=steps,
                                        scheduler=scheduler, progress=lambda k: progress.advance(task, k))
        _write_files(out, {"grid.png": png_bytes(t2i.sweep_grid(result, seed=seed)), "sweep.json": _json(
            {"model": model, "steps": steps, "scheduler": scheduler, "seed": seed, "seeds_per_prompt": seeds,
             "rows": [vars(r) for r in result.rows]})})
        typer.echo(result.table())
        typer.echo(f"grid (rows: guidance {', '.join(f'{g:g}' for g in scales)}): {out / 'grid.png'}")

    run()


@eval_app.command("negative")
def negative_command(
    prompt: str = typer.Option("a circle"),
    negative: str = typer.Option("red", help="A palette colour to steer away from."),
    model: str = typer.Option("tiny-shapes", help=MODEL_HELP),
    n: int = typer.Option(32, min=1, max=64, help="Seeds, the same with and without the negative prompt."),
    guidance: float = typer.Option(7.5, min=0.0),
    steps: int = typer.Option(20, min=1, max=1000),
    scheduler: str = typer.Option("DPM++ 2M"),
    seed: int = typer.Option(0, min=0),
    out: Path = typer.Option(Path("outputs/negative-prompt"), "--out", "-o"),
) -> None:
    """Does a negative prompt work? Share of images in the unwanted colour, with and without it, same seeds."""
    from difflab.cli import check_output, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.eval import t2i
        from difflab.viz.grid import make_grid, png_bytes

        from difflab.data.shapes import COLORS

        if negative not in COLORS:
            raise ValueError(f"negative must be one of the palette colours {', '.join(COLORS)}; got {negative!r}")
        _check(model, prompt=prompt, guidance=guidance, steps=steps, scheduler=scheduler)
        check_output(out)
        quiet_libraries()
        with progress_bar("negative prompt") as progress:
            task = progress.add_task("generating", total=2 * n, info=model)
            effect = t2i.negative_prompt_effect(model, prompt, negative, n=n, seed=seed, guidance=guidance,
                                                steps=steps, scheduler=scheduler,
                                                progress=lambda k: progress.advance(task, k))
        grid = make_grid(effect.images_without + effect.images_with, columns=n, scale=2,
                         labels=[f"seed {seed + i}" for i in range(n)],
                         row_labels=["without", f"negative: {negative}"])
        _write_files(out, {"grid.png": png_bytes(grid), "negative.json": _json(
            {k: v for k, v in vars(effect).items() if not k.startswith("images")})})
        typer.echo(effect.table())
        typer.echo(f"grid (top: without, bottom: with the negative prompt): {out / 'grid.png'}")

    run()
