"""``difflab train``: training commands. Thin: parse, load the recipe, drain the trainer's events into a bar."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from difflab.core.lr_schedule import DEFAULT_LR_SCHEDULER

train_app = typer.Typer(help="Train models: the bundled text-to-image model from scratch, LoRAs, ControlNets.",
                        no_args_is_help=True)


@train_app.command("t2i")
def t2i(
    config: Path = typer.Option(Path("configs/tiny-shapes.toml"), "--config", "-c", help="TOML recipe."),
    out: Path = typer.Option(Path("runs/tiny-shapes"), "--out", "-o", help="Run folder: checkpoints, curves, pipeline/."),
    resume: bool = typer.Option(False, help="Continue from the training state in --out."),
    phase: str = typer.Option("all", help="vae, decoder, text, unet, or all (vae, decoder, text, then unet; decoder and text where the recipe gives them steps)."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Cap every phase at this many steps (quick trials)."),
) -> None:
    """Train the text-to-image model: AutoencoderKL, then U-Net + text encoder; writes a diffusers pipeline folder.

    No --compile: torch.compile does not pay for training here (the first step compiles for minutes, later steps are
    no faster; bench/results/compile.md)."""
    from difflab.cli import check_output, fail, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.train.t2i import PHASES, train_t2i
        from difflab.train.t2i_config import load_config

        if phase not in PHASES:
            fail(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        recipe = load_config(config).with_max_steps(max_steps)
        check_output(out)  # before any training: a bad --out would otherwise fail at the first checkpoint
        quiet_libraries()
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


@train_app.command("lora")
def lora(
    base: str = typer.Option("tiny-shapes", "--base", help="Base model: preset, diffusers folder or cached hub id."),
    data: Path = typer.Option(..., "--data", help="Folder of images with same-named .txt captions."),
    trigger: str = typer.Option(..., "--trigger", help="Trigger word; fills {trigger} in --caption-template."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: LoRA files, training state, curves."),
    caption_template: str = typer.Option("{trigger}", help="Caption of an image without a .txt file."),
    rank: int = typer.Option(8, help="LoRA rank r."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha; the update is scaled by alpha / rank [default: rank]."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (see --lr-scheduler)."),
    text_encoder_lr: Optional[float] = typer.Option(None, help="Text encoder LoRA's rate [default: --lr]."),
    warmup_steps: int = typer.Option(20, help="Linear warm-up steps."),
    lr_scheduler: str = typer.Option(DEFAULT_LR_SCHEDULER, help="cosine_floor (warm-up, cosine decay to 10% of the peak), "
                                     "or diffusers'/kohya's constant, constant_with_warmup, linear, cosine (to 0)."),
    steps: int = typer.Option(500, help="Optimizer steps."),
    batch_size: int = typer.Option(8, help="Images per step."),
    text_encoder_lora: bool = typer.Option(False, help="Also train a LoRA on the text encoder's attention (SDXL: both "
                                           "CLIPs; Flux: CLIP, T5 stays frozen)."),
    reg_data: Optional[Path] = typer.Option(None, help="Prior preservation: folder of captioned images the model "
                                            "should keep drawing (e.g. made by the base model); one batch a step."),
    prior_loss_weight: float = typer.Option(1.0, min=0.0, help="Weight of the --reg-data batch's loss."),
    foreground_weight: float = typer.Option(0.0, min=0.0, max=1000.0, help="Masked loss: latent pixels under the "
                                            "subject count 1 + this many times (needs --masks)."),
    masks: Optional[str] = typer.Option(None, help="Folder of same-named greyscale masks (white = subject), or 'auto' "
                                        "for subjects on a flat background."),
    min_snr_gamma: Optional[float] = typer.Option(None, min=0.001, max=1000.0, help="Min-SNR-gamma loss weighting "
                                                  "(diffusers' --snr_gamma; 5 is usual) [default: off]."),
    network: str = typer.Option("attention", help="Layers adapted: attention (diffusers' example), transformer "
                                "(+ projections and feed-forward, kohya's LoRA) or locon (+ ResNet 3x3 convs; U-Net "
                                "bases only). On Flux: attention = the image stream's q/k/v/out, transformer = "
                                "diffusers' Flux example's layers."),
    validate_every: int = typer.Option(0, help="Write validation images every N steps (0: never)."),
    validation_prompt: list[str] = typer.Option([], "--validation-prompt", help="Repeatable [default: the first "
                                                "4 captions]."),
    checkpoint_every: int = typer.Option(100, help="Write the LoRA files and training state every N steps."),
    resume: bool = typer.Option(False, help="Continue from the training state in --out, exactly."),
    seed: int = typer.Option(0, help="LoRA initialisation and every random draw."),
    mixed_precision: str = typer.Option("no", help="no, fp16 or bf16 (autocast; fp16 needs a GPU)."),
    gradient_checkpointing: bool = typer.Option(False, help="Less memory, more compute (large bases on GPU)."),
    resolution: Optional[int] = typer.Option(None, help="Training image side [default: the base model's]."),
) -> None:
    """Train a LoRA on a folder of captioned images; writes diffusers and kohya .safetensors and a JSON record.

    No --compile: torch.compile does not pay for training here (the first step compiles for minutes, later steps are
    no faster; bench/results/compile.md)."""
    from difflab.cli import check_output, fail, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.train.distributed import is_main_process, main_process_only
        from difflab.train.lora import train_lora
        from difflab.train.lora_config import LoraTrainConfig

        if not data.is_dir():
            fail(f"--data {str(data)!r} is not a folder")
        if reg_data is not None and not reg_data.is_dir():
            fail(f"--reg-data {str(reg_data)!r} is not a folder")
        if masks not in (None, "auto") and not Path(masks).is_dir():
            fail(f"--masks {masks!r} is not a folder (or 'auto')")
        check_output(out)  # before the base model loads and the set-up runs
        quiet_libraries()
        config = LoraTrainConfig(
            base=base, data=str(data), trigger=trigger, caption_template=caption_template, rank=rank, alpha=alpha,
            learning_rate=lr, text_encoder_learning_rate=text_encoder_lr, warmup_steps=warmup_steps,
            lr_scheduler=lr_scheduler, steps=steps, batch_size=batch_size, text_encoder_lora=text_encoder_lora, network=network,
            reg_data=str(reg_data) if reg_data else None, prior_loss_weight=prior_loss_weight,
            foreground_weight=foreground_weight, masks=masks, min_snr_gamma=min_snr_gamma,
            validate_every=validate_every, validation_prompts=tuple(validation_prompt),
            checkpoint_every=checkpoint_every, seed=seed,
            mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, resolution=resolution,
        )
        with main_process_only(progress_bar("lora")) as progress:
            task = progress.add_task("lora", total=steps, info="")
            for event in train_lora(config, out, resume=resume):
                progress.update(task, completed=event.step, info=f"loss {event.loss:.4f}")
        if is_main_process():  # under accelerate launch, once
            typer.echo(str(out / "pytorch_lora_weights.safetensors"))

    run()


lora_app = typer.Typer(help="LoRA helpers: training sets.", no_args_is_help=True)


@lora_app.command("make-dataset")
def make_dataset(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write NNNN.png + NNNN.txt (and masks/NNNN.png, the "
                             "shape's mask for --masks) into."),
    shape: str = typer.Option("hexagon", help="Shape to render (hexagon is held out of the bundled model)."),
    n: int = typer.Option(20, "-n", help="Number of images."),
    trigger: Optional[str] = typer.Option(None, help="Word put before each caption [default: none; the captions "
                                          "name the shape]."),
    seed: int = typer.Option(0),
    resolution: int = typer.Option(64),
) -> None:
    """Write a LoRA training set of one shape from the procedural shapes world, with captions."""
    from difflab.cli import check_output, user_errors

    @user_errors
    def run() -> None:
        from difflab.data.captioned_folder import write_shape_set

        check_output(out)

        paths = write_shape_set(out, shape, n, seed, resolution, trigger)
        typer.echo(f"{len(paths)} images in {out}")

    run()


@train_app.command("controlnet")
def controlnet(
    base: str = typer.Option("tiny-shapes", "--base", help="Base model: preset or diffusers folder (SD1.x family)."),
    out: Path = typer.Option(Path("runs/tiny-shapes-controlnet-canny"), "--out", "-o",
                             help="Run folder: controlnet/, training state, curves, validation images."),
    steps: int = typer.Option(3000, help="Optimizer steps."),
    batch_size: int = typer.Option(32, help="Images per step."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (warm-up, then cosine decay to 10%)."),
    warmup_steps: int = typer.Option(50, help="Linear warm-up steps."),
    num_images: int = typer.Option(4000, help="Procedural shapes to train on (cached as latents and canny maps)."),
    data_seed: int = typer.Option(1, help="Seed of the shapes world the images come from."),
    low: int = typer.Option(100, help="Canny low threshold of the control maps."),
    high: int = typer.Option(200, help="Canny high threshold of the control maps."),
    empty_prompt_probability: float = typer.Option(0.5, help="Fraction of captions replaced by the empty prompt."),
    checkpoint_every: int = typer.Option(250, help="Write the ControlNet folder and training state every N steps."),
    validate_every: int = typer.Option(0, help="Validation grid + edge F1 every N steps (0: only at the end)."),
    validation_steps: int = typer.Option(20, help="Sampling steps of the validation images."),
    resume: bool = typer.Option(False, help="Continue from the training state in --out, exactly."),
    seed: int = typer.Option(0, help="ControlNet initialisation and every random draw."),
) -> None:
    """Train a canny ControlNet from the base U-Net on procedural shapes; writes a diffusers ControlNet folder.

    No --compile: torch.compile does not pay for training here (the first step compiles for minutes, later steps are
    no faster; bench/results/compile.md)."""
    from difflab.cli import check_output, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        from difflab.train.controlnet import CONTROLNET_DIR, train_controlnet
        from difflab.train.distributed import is_main_process, main_process_only
        from difflab.train.controlnet_config import ControlNetTrainConfig

        config = ControlNetTrainConfig(
            base=base, num_images=num_images, data_seed=data_seed, low=low, high=high, learning_rate=lr,
            warmup_steps=warmup_steps, steps=steps, batch_size=batch_size,
            empty_prompt_probability=empty_prompt_probability, checkpoint_every=checkpoint_every,
            validate_every=validate_every, validation_steps=validation_steps, seed=seed,
        )
        check_output(out)  # before the base model loads and the shapes are rendered
        quiet_libraries()
        with main_process_only(progress_bar("controlnet")) as progress:
            task = progress.add_task("controlnet", total=steps, info="")
            for event in train_controlnet(config, out, resume=resume):
                info = f"loss {event.loss:.4f}" + (f" edge F1 {event.edge_f1:.2f}" if event.edge_f1 is not None else "")
                progress.update(task, completed=event.step, info=info)
                if not progress.console.is_terminal and (event.checkpoint or event.step % 100 == 0):
                    typer.echo(f"step {event.step}/{event.total} {info} {event.seconds:.0f}s", err=True)
        if is_main_process():  # under accelerate launch, once
            typer.echo(str(out / CONTROLNET_DIR))

    run()

from difflab import embedding_cli  # noqa: E402,F401  (registers "train embedding" on train_app)
