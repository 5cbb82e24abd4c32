"""``difflab train``: training commands. Thin: parse, load the recipe, drain the trainer's events into a bar."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

train_app = typer.Typer(help="Train models: the bundled text-to-image model from scratch.", no_args_is_help=True)


@train_app.command("t2i")
def t2i(
    config: Path = typer.Option(Path("configs/tiny-shapes.toml"), "--config", "-c", help="TOML recipe."),
    out: Path = typer.Option(Path("runs/tiny-shapes"), "--out", "-o", help="Run folder: checkpoints, curves, pipeline/."),
    resume: bool = typer.Option(False, help="Continue from the training state in --out."),
    phase: str = typer.Option("all", help="vae, unet, or all (vae then unet)."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Cap every phase at this many steps (quick trials)."),
) -> None:
    """Train the text-to-image model: AutoencoderKL, then U-Net + text encoder; writes a diffusers pipeline folder."""
    from difflab.cli import fail, progress_bar, user_errors

    @user_errors
    def run() -> None:
        from difflab.train.t2i import PHASES, train_t2i
        from difflab.train.t2i_config import load_config

        if phase not in PHASES:
            fail(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        recipe = load_config(config).with_max_steps(max_steps)
        tasks: dict[str, int] = {}
        with progress_bar("training") as progress:
            for event in train_t2i(recipe, out, phase=phase, resume=resume):  # type: ignore[arg-type]
                if event.phase not in tasks:
                    tasks[event.phase] = progress.add_task(event.phase, total=event.total, info="")
                info = f"loss {event.loss:.4f}"
                if event.adherence:
                    info += f" shape+color {100 * (event.adherence.get('shape+color') or 0):.0f}%"
                progress.update(tasks[event.phase], completed=event.step, info=info)
        typer.echo(f"run: {out}")
        if (out / "pipeline" / "model_index.json").is_file():
            typer.echo(f"pipeline: {out / 'pipeline'}")

    run()
