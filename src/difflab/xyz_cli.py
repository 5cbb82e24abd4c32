"""``difflab xyz``: A1111's X/Y/Z plot over difflab.engine.xyz.

Registered on the main app in cli.py; only typer is imported here so ``difflab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def xyz_command(
    prompt: str = typer.Argument(..., help="The base prompt (prompt-sr replaces text in it)."),
    x: str = typer.Option(..., "--x", help="Columns: FIELD:V1,V2,... e.g. steps:10,20,30 or guidance:3-9 (+3). "
                          "Fields: seed, steps, guidance, guidance-end, sampler, prompt-sr, negative, model, "
                          "lora-weight, control-scale, strength, width, height, hires-scale, hires-strength, clip-skip."),
    y: str = typer.Option(..., "--y", help="Rows: FIELD:V1,V2,..."),
    z: Optional[str] = typer.Option(None, "--z", help="One grid per value, side by side: FIELD:V1,V2,..."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    model: str = typer.Option("tiny-shapes", help="Preset, diffusers folder or .safetensors file."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps \\[default: the model's]."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale \\[default: the model's]."),
    guidance_end: Optional[float] = typer.Option(None, help="Fraction of the steps with guidance \\[default: the "
                                                 "model's]."),
    seed: int = typer.Option(0, help="Seed of every cell unless an axis sets it."),
    scheduler: Optional[str] = typer.Option(None, help="A1111 sampler name."),
    width: Optional[int] = typer.Option(None),
    height: Optional[int] = typer.Option(None),
    lora: list[str] = typer.Option([], "--lora", help="NAME_OR_PATH[:WEIGHT], repeatable (lora-weight sets the "
                                   "weight of the one given)."),
    control: list[str] = typer.Option([], "--control", help="KIND:IMAGE[:SCALE], repeatable (control-scale sets "
                                      "every unit's scale)."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="img2img: start from this image."),
    strength: Optional[float] = typer.Option(None, help="img2img strength."),
    out: Path = typer.Option(Path("outputs/xyz"), "--out", "-o", help="Folder: cells/, plot.json, grid.png. "
                             "Re-running into it draws only the missing cells."),
) -> None:
    """An X/Y/Z plot (A1111's): every combination of two or three axes of request fields, one labelled grid."""
    from difflab.cli import check_output, fail, progress_bar, quiet_libraries

    check_output(out)
    quiet_libraries()

    try:
        from difflab.engine.registry import check_scheduler_fits, resolve_model
        from difflab.engine.xyz import check_plan, draw_plot, parse_axis, plan_plot

        axes = [parse_axis(text, option) for text, option in ((x, "--x"), (y, "--y"), (z, "--z")) if text is not None]
        base = {"prompt": prompt, "negative_prompt": negative, "model": model, "steps": steps, "guidance": guidance,
                "guidance_end": guidance_end, "seed": seed, "scheduler": scheduler, "width": width, "height": height,
                "loras": lora, "controls": control, "init_image": str(init_image) if init_image else None,
                "strength": strength}
        plot = plan_plot(base, axes)
        check_plan(out, plot)  # before any model loads: a folder of another plot is refused now
        for name, scheduler_name in sorted({(r.model, r.scheduler or "") for _, r in plot.cells}):
            check_scheduler_fits(resolve_model(name), scheduler_name or None)
        with progress_bar("xyz plot") as progress:
            task = progress.add_task("cells", total=len(plot.cells), info="")
            grid = draw_plot(plot, out, on_cell=lambda done, total, drawn: progress.update(
                task, completed=done, info="drawn" if drawn else "kept"))
    except ValueError as error:
        fail(str(error))
    typer.echo(str(grid))
