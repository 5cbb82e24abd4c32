"""``difflab viz lora-weights`` and ``difflab viz control-scale``: the LoRA-weight grid and the ControlNet scale
sweep of labs 5 and 3, one command away. Thin: parse, call difflab.viz.lora_weights / control_scale, write the
grid and its table, print the table and the grid's path (the last line)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

MODEL_HELP = "Preset, diffusers folder or .safetensors file."


def _write_results(out: Path, sweep, description: str) -> None:
    from difflab.output_files import save_named_files
    from difflab.viz.grid import png_bytes

    # replaced atomically; if the folder fails now (disk full, removed), they go to a rescue folder
    save_named_files(out, {"grid.png": png_bytes(sweep.grid()),
                           "table.md": f"{description}\n\n{sweep.table()}\n".encode()})
    typer.echo(sweep.table())
    typer.echo(str(out / "grid.png"))


def lora_weights_command(
    lora: str = typer.Argument(..., help="The LoRA: a .safetensors file, a training folder or a name in ./loras "
                               "(no ':WEIGHT'; the sweep sets it)."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Repeatable; use the LoRA's trigger word."),
    weights: str = typer.Option("0,0.5,1,1.5", help="Comma-separated LoRA weights, one row each (0: no LoRA)."),
    seeds: int = typer.Option(2, min=1, max=16, help="Images per prompt and row, seeds seed .. seed + N - 1."),
    model: str = typer.Option("tiny-shapes", help=MODEL_HELP),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help="[default: the model's]"),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="[default: the model's]"),
    seed: int = typer.Option(0, min=0),
    out: Path = typer.Option(Path("outputs/lora-weights"), "--out", "-o", help="Folder for grid.png and table.md."),
) -> None:
    """A LoRA at several weights: the same prompts and seeds in every row, read back by the analyzer."""
    from difflab.cli import check_output, comma_numbers, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.engine.lora import resolve_lora
        from difflab.viz.lora_weights import lora_weight_sweep

        values = comma_numbers(weights, "weights", -10.0, 10.0)
        resolve_lora(lora)  # a missing or unreadable LoRA fails before the model loads
        check_output(out)
        quiet_libraries()
        settings = {k: v for k, v in dict(steps=steps, guidance=guidance).items() if v is not None}
        with progress_bar("lora weights") as progress:
            task = progress.add_task("generating", total=len(values) * len(prompt) * seeds, info=model)
            sweep = lora_weight_sweep(model, lora, prompt, values, seeds=seeds, seed=seed,
                                      progress=lambda k: progress.advance(task, k), **settings)
        _write_results(out, sweep, f"`difflab viz lora-weights {lora}` on {model}: rows are weights "
                       f"{', '.join(f'{w:g}' for w in values)}; columns {seeds} seeds of each prompt: "
                       + "; ".join(prompt))

    run()


def control_scale_command(
    picture: Path = typer.Argument(..., help="The picture the ControlNet's preprocessor reads."),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    kind: str = typer.Option("canny", help="Preprocessor: canny, scribble, softedge, depth, pose or none. Edge F1 "
                             "is measured for canny."),
    scales: str = typer.Option("0,0.5,1,1.5", help="Comma-separated conditioning scales, one row each."),
    seeds: int = typer.Option(3, min=1, max=16, help="Images per row, seeds seed .. seed + N - 1."),
    controlnet: Optional[str] = typer.Option(None, help="ControlNet [default: the registry's for the kind and model]."),
    model: str = typer.Option("tiny-shapes", help=MODEL_HELP),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help="[default: the model's]"),
    seed: int = typer.Option(0, min=0),
    out: Path = typer.Option(Path("outputs/control-scale"), "--out", "-o", help="Folder for grid.png and table.md."),
) -> None:
    """A ControlNet's conditioning scale: one prompt, the same seeds per row, each row's edge F1 measured."""
    from difflab.cli import check_output, comma_numbers, fail, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.engine.control import MAX_SCALE
        from difflab.viz.control_scale import control_scale_sweep

        values = comma_numbers(scales, "scales", 0.0, MAX_SCALE)
        if not picture.is_file():
            fail(f"picture {str(picture)!r} is not a file")
        check_output(out)
        quiet_libraries()
        settings = {} if steps is None else {"steps": steps}
        with progress_bar("control scale") as progress:
            task = progress.add_task("generating", total=len(values) * seeds, info=model)
            sweep = control_scale_sweep(model, str(picture), prompt, values, kind=kind, seeds=seeds, seed=seed,
                                        controlnet=controlnet, progress=lambda k: progress.advance(task, k),
                                        **settings)
        _write_results(out, sweep, f"`difflab viz control-scale {picture}` ({kind}) on {model}, prompt {prompt!r}: "
                       f"the control map on the left; rows are scales {', '.join(f'{s:g}' for s in values)}, columns "
                       f"{seeds} seeds")

    run()
