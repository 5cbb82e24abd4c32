"""``difflab train embedding``: textual inversion on a folder of captioned images (train/textual_inversion.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from difflab.train.cli import train_app


@train_app.command("embedding")
def embedding(
    data: Path = typer.Option(..., "--data", help="Folder of images with same-named .txt captions."),
    token: str = typer.Option(..., "--token", help="The new word, e.g. '<my-style>'; also the A1111 file's name."),
    init_word: str = typer.Option(..., "--init-word", help="An existing word the vectors start from, e.g. 'shape'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: learned_embeds.safetensors (diffusers), "
                             "<token>.safetensors (A1111), training.json, training state, loss curve."),
    base: str = typer.Option("tiny-shapes", "--base", help="Base model (SD 1.x/2.x family): preset or diffusers folder."),
    vectors: int = typer.Option(1, "--vectors", help="Vectors per token (A1111's 'number of vectors per token')."),
    steps: int = typer.Option(500, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(5e-3, "--lr", help="Learning rate of the vectors (constant, AdamW)."),
    batch_size: int = typer.Option(4, help="Images per step."),
    caption_template: str = typer.Option("{trigger}", help="Caption of an image without a .txt file; {trigger} = "
                                         "the token."),
    checkpoint_every: int = typer.Option(100, help="Write the embedding files and training state every N steps."),
    resolution: Optional[int] = typer.Option(None, help="Training image side [default: the base model's]."),
    seed: int = typer.Option(0, help="Every random draw (batches, noise, timesteps)."),
    resume: bool = typer.Option(False, help="Continue from the training state in --out, exactly."),
) -> None:
    """Train a textual inversion embedding: only the new token's vectors learn; writes diffusers' and A1111's
    .safetensors files, loadable with --embedding and diffusers' load_textual_inversion."""
    from difflab.cli import fail, progress_bar, user_errors

    @user_errors
    def run() -> None:
        from difflab.train.textual_inversion import DIFFUSERS_NAME, check_out, train_embedding
        from difflab.train.textual_inversion_config import TextualInversionConfig

        if not data.is_dir():
            fail(f"--data {str(data)!r} is not a folder")
        check_out(out, resume)  # before any weights load
        config = TextualInversionConfig(
            data=str(data), token=token, init_word=init_word, base=base, vectors=vectors, steps=steps,
            learning_rate=lr, batch_size=batch_size, caption_template=caption_template,
            checkpoint_every=checkpoint_every, seed=seed, resolution=resolution)
        with progress_bar("embedding") as progress:
            task = progress.add_task("embedding", total=steps, info="")
            for event in train_embedding(config, out, resume=resume):
                progress.update(task, completed=event.step, info=f"loss {event.loss:.4f}")
        typer.echo(str(out / DIFFUSERS_NAME))
        typer.echo(str(out / f"{token}.safetensors"))

    run()
