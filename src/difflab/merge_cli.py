"""``difflab merge``: A1111's checkpoint merger (weighted sum, add difference) over difflab.engine.merge.

Registered on the main app in cli.py; only typer is imported here so ``difflab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def merge_command(
    model_a: Path = typer.Argument(..., metavar="A", help="Primary model: a diffusers folder or .safetensors file."),
    model_b: Path = typer.Argument(..., metavar="B", help="Secondary model, of A's family and architecture."),
    model_c: Optional[Path] = typer.Argument(None, metavar="[C]", help="add-difference only: the model B was "
                                             "fine-tuned from."),
    mode: str = typer.Option("weighted-sum", help="weighted-sum: (1 - alpha) A + alpha B; add-difference: "
                             "A + alpha (B - C)."),
    alpha: float = typer.Option(0.5, help="The multiplier, 0 to 1 (A1111's 'Multiplier (M)')."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged model: a folder when A and B are folders, else "
                             "a .safetensors file. Never overwritten."),
) -> None:
    """Merge two or three checkpoints as A1111's checkpoint merger does; the recipe goes into the file metadata."""
    from difflab.cli import check_output, fail, progress_bar, quiet_libraries

    check_output(out, kind="file" if out.suffix == ".safetensors" else "folder")
    quiet_libraries()

    try:
        from difflab.engine.merge import MergeRecipe, merge_models

        recipe = MergeRecipe(mode, alpha, tuple(p for p in (model_a, model_b, model_c) if p is not None))
        if out.exists():
            fail(f"--out: {str(out)!r} already exists; merging never overwrites a model")
        with progress_bar("merging") as progress:
            task = progress.add_task("merging", total=None, info=recipe.mode)
            merged = merge_models(recipe, out, on_tensor=lambda done, total: progress.update(
                task, completed=done, total=total))
    except ValueError as error:
        fail(str(error))
    typer.echo(str(merged))
