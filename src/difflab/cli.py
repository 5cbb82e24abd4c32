"""The ``difflab`` command line: parse, call the library, print. Heavy imports happen inside the commands."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import typer

app = typer.Typer(
    help="difflab: diffusion from scratch to production image generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help text: typer's rich markup would eat every "[default: ...]" and "[word]" in the help strings
    rich_markup_mode=None,
)
ddpm_app = typer.Typer(help="Pixel-space diffusion from scratch (lab 1): train and sample.", no_args_is_help=True)
viz_app = typer.Typer(help="Pictures that explain diffusion.", no_args_is_help=True)
app.add_typer(ddpm_app, name="ddpm")
app.add_typer(viz_app, name="viz")
from difflab.train.cli import lora_app, train_app  # noqa: E402  (typer only; trainers load inside the commands)
app.add_typer(train_app, name="train")
app.add_typer(lora_app, name="lora")
from difflab.eval.cli import eval_app  # noqa: E402  (typer only)
app.add_typer(eval_app, name="eval")
from difflab.control_cli import control_app  # noqa: E402  (typer only)
app.add_typer(control_app, name="control")


def fail(message: str) -> None:
    """One line on stderr and exit status 2: the contract for every bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command: Callable) -> Callable:
    """Turn ValueErrors (bad input found by the library) into one-line errors (exit 2) instead of tracebacks, and
    a write that failed after the work (disk full, folder gone) into the paths that were saved, the rescue
    folder's among them, and one line saying where (exit 1)."""
    from difflab.output_files import OutputWriteError

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ValueError as error:
            fail(str(error))
        except OutputWriteError as error:
            for path in (*error.written, *error.rescued):
                typer.echo(str(path))
            typer.echo(f"error: {error.describe('--out')}", err=True)
            raise typer.Exit(1) from None
        except OSError as error:  # the machine, not the input: still one line
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def check_output(path: Optional[Path], option: str = "--out", kind: str = "folder") -> None:
    """Before any weights load: the output ``kind`` ("folder" or "file") at ``path`` can be written, else one line
    naming ``option`` and exit 2. Creates nothing."""
    from difflab.output_files import output_problem

    if path is not None and (problem := output_problem(path, kind)) is not None:
        fail(f"{option} {str(path)!r} {problem}")


def quiet_libraries() -> None:
    """What diffusers and transformers print while loading that a difflab user cannot act on: their progress
    bars (difflab draws its own) and transformers' note that image processors fall back to PIL without
    torchvision (difflab needs no torchvision). Their warnings otherwise still show."""
    import logging

    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components..."
    transformers.utils.logging.disable_progress_bar()  # "Loading weights"
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallbackFilter) for f in logger.filters):
        logger.addFilter(_TorchvisionFallbackFilter())


class _TorchvisionFallbackFilter:
    """Drops transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...Pil"."""

    def filter(self, record) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


# --backend / --precision of generate, batch, replay and serve (engine/backends): a run-level choice
BACKEND_HELP = ("torch, or openvino: the same pipeline with OpenVINO-compiled U-Net, text encoders and VAE (CPU; "
                "converted once per model, LoRA set and size, then cached; needs the openvino extra).")
PRECISION_HELP = ("OpenVINO precision: f32 (matches PyTorch) or bf16 (faster; needs a CPU with avx512_bf16 or "
                  "amx_bf16).")


def _print_version(value: bool) -> None:
    if value:
        from difflab import __version__

        typer.echo(f"difflab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print difflab's version and exit.")) -> None:
    """difflab: diffusion from scratch to production image generation."""


def comma_numbers(text: str, option: str, low: float, high: float) -> list[float]:
    """``"0,0.5,1"`` -> [0.0, 0.5, 1.0]; anything else, or a number outside [low, high], fails naming the option."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not (low <= value <= high) for value in values):
        fail(f"{option} must be comma-separated numbers in [{low:g}, {high:g}]; got {text!r}")
    return values


def bundled_digits_checkpoint() -> Path:
    return Path(__file__).parent / "models" / "digits"


def progress_bar(description: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(  # on stderr: stdout is for results (paths) that scripts read
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=False, console=Console(stderr=True),
    )


@ddpm_app.command("train")
@user_errors
def ddpm_train(
    dataset: str = typer.Option("digits", help="'digits' (sklearn's, offline) or a folder of images."),
    out: Path = typer.Option(Path("runs/digits"), "--out", "-o", help="Checkpoint folder."),
    steps: int = typer.Option(4000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(128, min=1),
    learning_rate: float = typer.Option(1e-3, "--lr", min=0.0),
    schedule: str = typer.Option("linear", help="Noise schedule: linear, scaled_linear, cosine."),
    prediction: str = typer.Option("epsilon", help="What the network predicts: epsilon, sample (x0), v_prediction."),
    min_snr_gamma: Optional[float] = typer.Option(None, help="Min-SNR-gamma loss weighting, e.g. 5."),
    label_dropout: float = typer.Option(0.1, help="Probability of the null label (classifier-free guidance)."),
    unconditional: bool = typer.Option(False, help="Ignore labels: train p(x) only."),
    base_channels: int = typer.Option(32, min=8),
    image_size: int = typer.Option(8, min=4, help="Image side for a folder dataset (digits are always 8)."),
    channels: int = typer.Option(1, help="1 (grey) or 3 (RGB) for a folder dataset."),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(500, min=1),
    resume: bool = typer.Option(False, help="Continue from the training state in --out."),
) -> None:
    """Train a pixel-space diffusion U-Net; writes checkpoints, loss.csv/png and a final samples.png grid.

    No --compile: torch.compile does not pay for training here (the first step compiles for minutes, later steps are
    no faster; bench/results/compile.md)."""
    from difflab.core.train import TrainConfig, train
    from difflab.core.unet import UNetConfig

    check_output(out)
    data, dataset_name = _load_dataset(dataset, image_size, channels)
    first = data.images[0]
    conditional = not unconditional and data.num_classes > 1
    unet_config = UNetConfig(
        image_size=first.shape[-1], in_channels=first.shape[0], out_channels=first.shape[0],
        base_channels=base_channels, num_classes=data.num_classes if conditional else None,
    )
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, schedule=schedule, prediction=prediction,  # type: ignore[arg-type]
        min_snr_gamma=min_snr_gamma, label_dropout=label_dropout, seed=seed, checkpoint_every=checkpoint_every,
    )
    if schedule not in ("linear", "scaled_linear", "cosine"):
        fail(f"schedule must be one of linear, scaled_linear, cosine; got {schedule!r}")
    with progress_bar("training") as progress:
        task = progress.add_task("training", total=steps, info="")
        for event in train(data, unet_config, config, out, dataset_name=dataset_name, resume=resume):
            progress.update(task, completed=event.step, info=f"loss {event.loss:.4f}")
            if not progress.console.is_terminal and (event.checkpoint or event.step % 100 == 0):
                # a log file gets a line now and then instead of a bar it cannot redraw
                typer.echo(f"step {event.step}/{event.total} loss {event.loss:.4f} {event.seconds:.0f}s", err=True)
    grid = _write_sample_grid(out)
    typer.echo(f"checkpoint: {out}\nloss curve: {out / 'loss.png'}\nsamples: {grid}")


def _load_dataset(dataset: str, image_size: int, channels: int):
    if dataset == "digits":
        from difflab.data.digits import load_digits

        return load_digits(), "digits"
    from difflab.data.image_folder import load_image_folder

    return load_image_folder(dataset, image_size, channels), str(Path(dataset).resolve())


def _write_sample_grid(folder: Path) -> Path:
    """Ten samples of every class (or 64 unconditional) from a checkpoint, as samples.png beside it."""
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import SampleRequest, sample_images
    from difflab.viz.grid import make_grid, to_pil

    model = load_model(folder)
    num_classes = model.spec.unet.num_classes
    labels = tuple(c for c in range(num_classes) for _ in range(10)) if num_classes else (None,) * 64
    images = to_pil(sample_images(model, SampleRequest(labels=labels)))
    path = folder / "samples.png"
    make_grid(images, columns=10 if num_classes else 8, scale=4).save(path)
    return path


def _parse_label(label: Optional[str], class_names: tuple[str, ...]) -> Optional[int]:
    if label is None or label.lower() == "none":
        return None
    if label in class_names:
        return class_names.index(label)
    try:
        return int(label)
    except ValueError:
        fail(f"label must be one of {', '.join(class_names) or 'none'}; got {label!r}")
    return None  # unreachable


@ddpm_app.command("sample")
@user_errors
def ddpm_sample(
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="Checkpoint folder [default: the bundled digits model]."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Class to draw (name or index); default: every class in turn."),
    n: int = typer.Option(64, "-n", help="Number of samples."),
    sampler: str = typer.Option("dpmpp-2m", help="ddpm, ddim, euler, euler-ancestral, heun, dpmpp-2m, dpmpp-2m-sde."),
    steps: int = typer.Option(20, help="Sampler steps (DDPM was trained with 1000)."),
    guidance: float = typer.Option(3.0, help="Classifier-free guidance scale (1 = none)."),
    seed: int = typer.Option(0, help="Sample i uses seed + i."),
    karras: bool = typer.Option(False, help="Karras et al. sigma spacing instead of evenly spaced timesteps."),
    eta: Optional[float] = typer.Option(None, help="Noise of ddim / euler-ancestral (0 = deterministic)."),
    out: Path = typer.Option(Path("outputs/ddpm"), "--out", "-o", help="Output folder."),
) -> None:
    """Draw samples from a checkpoint: one PNG per sample (numbered NNNNN-SEED.png, never replacing a file) and a
    grid (grid-NNNN-SEED.png)."""
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import SampleRequest, sample_steps
    from difflab.output_files import save_new_images
    from difflab.viz.grid import make_grid, png_bytes, to_pil

    check_output(out)
    model = load_model(checkpoint or bundled_digits_checkpoint())
    if n < 1:
        fail(f"n must be >= 1; got {n}")
    if label is None and model.spec.unet.num_classes:
        labels = tuple(i % model.spec.unet.num_classes for i in range(n))
    else:
        labels = (_parse_label(label, model.spec.class_names),) * n
    request = SampleRequest(labels=labels, sampler=sampler, steps=steps, guidance=guidance, seed=seed, karras=karras, eta=eta)
    request.validate(model)
    x = None
    with progress_bar("sampling") as progress:
        task = progress.add_task("sampling", total=steps, info=sampler)
        for step in sample_steps(model, request):
            x = step.x
            progress.update(task, completed=step.index + 1, info=f"sigma {step.sigma_next:.3f}")
    images = to_pil(x.clamp(-1, 1))
    paths = save_new_images(out, ((seed + i, png_bytes(image)) for i, image in enumerate(images)))
    grid = make_grid(images, columns=min(10, n) if n % 10 == 0 else None, scale=4)
    [grid_path] = save_new_images(out, [(seed, png_bytes(grid))], basename="grid")
    typer.echo(f"{len(paths)} samples in {out} ({paths[0].name} to {paths[-1].name})\ngrid: {grid_path}")


@viz_app.command("schedules")
@user_errors
def viz_schedules(
    out: Path = typer.Option(Path("outputs/schedules.png"), "--out", "-o"),
    schedules: str = typer.Option("linear,cosine", help="Comma-separated: linear, scaled_linear, cosine."),
) -> None:
    """Plot alpha-bar and log-SNR curves of noise schedules side by side."""
    from difflab.viz.curves import plot_schedules

    names = [s.strip() for s in schedules.split(",") if s.strip()]
    for name in names:
        if name not in ("linear", "scaled_linear", "cosine"):
            fail(f"schedules must be from linear, scaled_linear, cosine; got {name!r}")
    check_output(out, kind="file")
    out.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(str(plot_schedules(names, out)))


@viz_app.command("forward")
@user_errors
def viz_forward(
    image: Path = typer.Argument(..., help="An image file (or 'digit:N' for a digit from sklearn's set)."),
    out: Path = typer.Option(Path("outputs/forward.png"), "--out", "-o"),
    schedules: str = typer.Option("linear,cosine", help="One row per schedule."),
    columns: int = typer.Option(10, min=2, help="Timesteps shown, evenly from 0 to T-1."),
    size: int = typer.Option(64, min=8, help="Image side in pixels."),
    seed: int = typer.Option(0),
) -> None:
    """The forward process q(x_t | x_0) as a grid: one row per schedule, noise rising left to right."""
    from difflab.viz.forward import forward_grid, load_image_tensor

    names = [s.strip() for s in schedules.split(",") if s.strip()]
    check_output(out, kind="file")
    x_0 = load_image_tensor(str(image), size)
    out.parent.mkdir(parents=True, exist_ok=True)
    forward_grid(x_0, names, columns=columns, seed=seed).save(out)
    typer.echo(str(out))


@viz_app.command("trajectory")
@user_errors
def viz_trajectory(
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="[default: the bundled digits model]"),
    label: Optional[str] = typer.Option("3", "--label", "-l", help="Class to draw."),
    sampler: str = typer.Option("dpmpp-2m"),
    steps: int = typer.Option(20),
    guidance: float = typer.Option(3.0),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("outputs/trajectory.png"), "--out", "-o"),
    gif: Optional[Path] = typer.Option(None, "--gif", help="Also write every step as a GIF: the state above the "
                                       "predicted x0, for --samples samples."),
    samples: int = typer.Option(1, min=1, max=64, help="Samples drawn (seeds seed..seed+samples-1); the grid "
                                "shows the first, the GIF all."),
) -> None:
    """The denoising trajectory: the noisy state and the predicted x0 after each step, as a grid (and a GIF)."""
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import SampleRequest, sample_steps
    from difflab.viz.trajectory import trajectory_grid

    check_output(out, kind="file")
    check_output(gif, "--gif", kind="file")
    model = load_model(checkpoint or bundled_digits_checkpoint())
    labels = (_parse_label(label, model.spec.class_names),) * samples
    request = SampleRequest(labels=labels, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    trajectory = list(sample_steps(model, request))
    grid = trajectory_grid(trajectory)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    typer.echo(str(out))
    if gif is not None:
        from difflab.viz.animation import trajectory_gif

        typer.echo(str(trajectory_gif(trajectory, gif, samples=samples)))


@viz_app.command("samplers")
@user_errors
def viz_samplers(
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="[default: the bundled digits model]"),
    samplers: str = typer.Option("ddim,euler-ancestral,dpmpp-2m", help="Comma-separated sampler names (rows)."),
    steps: str = typer.Option("5,10,20", help="Comma-separated step counts (columns)."),
    per_class: int = typer.Option(10, min=1, help="Samples of each digit per cell, scored for FD and accuracy."),
    guidance: float = typer.Option(3.0),
    seed: int = typer.Option(0, help="Sample i uses seed + i in every cell."),
    out: Path = typer.Option(Path("outputs/samplers.png"), "--out", "-o"),
) -> None:
    """Samplers x steps from the same seeds, each cell with its measured FD, class accuracy and time."""
    from difflab.core.checkpoint import load_model
    from difflab.viz.samplers import compare_samplers, plot_sampler_comparison

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    try:
        counts = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        fail(f"steps must be comma-separated whole numbers; got {steps!r}")
    from difflab.core.samplers import get_sampler

    for name in names:  # a bad name fails before the model loads and the bar is drawn
        get_sampler(name)
    check_output(out, kind="file")
    model = load_model(checkpoint or bundled_digits_checkpoint())
    with progress_bar("sampling") as progress:
        task = progress.add_task("sampling", total=len(names) * len(counts), info="")
        result = compare_samplers(model, names, counts, per_class=per_class, guidance=guidance, seed=seed,
                                  progress=lambda cell: progress.update(task, advance=1, info=cell.sampler))
    out.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(result.table())
    typer.echo(str(plot_sampler_comparison(result, out)))


@app.command("generate")
@user_errors
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    n: int = typer.Option(1, "-n", help="Number of images; image i uses seed + i."),
    negative: str = typer.Option("", "--negative", help="Negative prompt: what to steer away from."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps [default: the model's]."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale [default: the model's]."),
    guidance_end: Optional[float] = typer.Option(None, help="Fraction of the steps that use guidance, (0, 1]; the "
                                                 "rest use the conditional prediction alone [default: the model's: "
                                                 "0.7 for tiny-shapes, 1 for the others]."),
    seed: int = typer.Option(0),
    scheduler: Optional[str] = typer.Option(None, help="A1111 sampler name, e.g. 'DPM++ 2M Karras', 'Euler a'."),
    width: Optional[int] = typer.Option(None, help="Multiple of 8 [default: the model's]."),
    height: Optional[int] = typer.Option(None),
    model: str = typer.Option("tiny-shapes", help="Preset, hub id (cached), diffusers folder or .safetensors file."),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder."),
    lora: list[str] = typer.Option([], "--lora", help="NAME_OR_PATH[:WEIGHT], repeatable: LoRAs combined with "
                                   "their weights; names are looked up in $DIFFLAB_LORA_DIR (default ./loras)."),
    control: list[str] = typer.Option([], "--control", help="KIND:IMAGE[:SCALE], repeatable (multi-ControlNet): "
                                      "kind canny, scribble, softedge, depth, pose or none (IMAGE is the map)."),
    control_model: list[str] = typer.Option([], "--control-model", help="ControlNet of the i-th --control: a "
                                            "registry kind, folder or cached hub id [default: the registry's]."),
    control_start: float = typer.Option(0.0, help="Fraction of the steps before the ControlNets act."),
    control_end: float = typer.Option(1.0, help="Fraction of the steps after which the ControlNets stop."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="img2img: start from this image "
                                              "(its size is the default size)."),
    strength: Optional[float] = typer.Option(None, help="img2img/inpainting: how much is redrawn, 0-1 [0.75]."),
    mask: Optional[Path] = typer.Option(None, help="Inpainting: mask the size of --init-image; white = redraw."),
    refiner: Optional[str] = typer.Option(None, help="SDXL: refiner model for the last steps (ensemble of experts)."),
    refiner_switch: Optional[float] = typer.Option(None, help="SDXL: fraction of the noise levels the base model "
                                                   "denoises before the refiner takes over [0.8]."),
    hires_scale: Optional[float] = typer.Option(None, help="Hires fix: generate, upscale (Lanczos) by this "
                                                "factor (1-4], then redraw with img2img."),
    hires_strength: Optional[float] = typer.Option(None, help="Hires fix: img2img strength [0.5]."),
    hires_steps: Optional[int] = typer.Option(None, help="Hires fix: steps of the second pass [--steps]."),
    hires_upscaler: Optional[str] = typer.Option(None, help="Hires fix: Lanczos (default), Nearest, or an ESRGAN / "
                                                 "Real-ESRGAN .safetensors file (path, or name in $DIFFLAB_UPSCALER_DIR)."),
    vae: Optional[str] = typer.Option(None, "--vae", help="Another VAE: an AutoencoderKL folder or .safetensors "
                                      "file, or a name in $DIFFLAB_VAE_DIR (default ./vae)."),
    embedding: list[str] = typer.Option([], "--embedding", help="FILE[:TOKEN], repeatable: a textual inversion "
                                        "embedding (.safetensors) used as TOKEN [default: its own]; files in "
                                        "$DIFFLAB_EMBEDDINGS_DIR (default ./embeddings) load when their name is in a prompt."),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip", help="A1111's Clip skip: 1 = the text encoder's "
                                            "last layer, 2 = the one before it (SD 1.x, SDXL)."),
    long_prompt: str = typer.Option("chunk", help="Prompts over the text encoder's token limit: 'chunk' "
                                    "(A1111: 75-token chunks, concatenated) or 'truncate' (with a warning)."),
    memory: list[str] = typer.Option([], "--memory", help="Memory knob, repeatable or a comma list: attention_slicing, "
                                     "vae_slicing, vae_tiling, model_cpu_offload, sequential_cpu_offload. On a CUDA "
                                     "out-of-memory error the next one is turned on for one retry."),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle", help="Load a .ckpt/.pt/.bin model "
                                             "file; pickles can run arbitrary code, so only from a trusted source."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    precision: str = typer.Option("f32", "--precision", help=PRECISION_HELP),
) -> None:
    """Generate images from a prompt (or an init image and mask); writes PNGs with A1111 parameters and a JSON
    record embedded. Prompts take A1111 weights: (word:1.3), (word), [word]."""
    from difflab.control_cli import controls_from_options
    from difflab.engine.request import build_request

    request = build_request(prompt=prompt, negative_prompt=negative, model=model, n=n, steps=steps,
                            guidance=guidance, guidance_end=guidance_end, seed=seed, scheduler=scheduler,
                            width=width, height=height, loras=lora, init_image=str(init_image) if init_image else None, strength=strength,
                            mask=str(mask) if mask else None, refiner=refiner, refiner_switch=refiner_switch,
                            hires_scale=hires_scale, hires_strength=hires_strength, hires_steps=hires_steps,
                            hires_upscaler=hires_upscaler,
                            long_prompt=long_prompt, clip_skip=clip_skip, vae=vae, memory=memory, embeddings=embedding,
                            allow_unsafe_pickle=allow_unsafe_pickle,
                            controls=controls_from_options(control, control_model), control_start=control_start,
                            control_end=control_end)
    check_output(out)  # a file, or a folder that cannot be written, fails before any weights load
    from difflab.engine.backends import choose_backend, pipeline_cache

    chosen_backend = choose_backend(backend, precision)  # openvino missing, bf16 on a CPU without it: fail now
    from difflab.engine.registry import check_scheduler_fits, resolve_model

    # a missing, unknown or corrupt model, or a sampler the model cannot use, fails here, before any output exists
    check_scheduler_fits(resolve_model(request.model, request.allow_unsafe_pickle), request.scheduler)
    from difflab.engine.modes import check_request_settings

    check_request_settings(request)  # strength vs steps, refiner families: before the progress bar starts
    from difflab.engine.backends import check_request_fits

    check_request_fits(chosen_backend, request)  # families, ControlNet, memory knobs the backend refuses
    from difflab.engine.lora import resolve_all

    resolve_all(request.loras)  # a missing LoRA too
    from difflab.engine.outputs import save_result
    from difflab.engine.pipeline import run

    quiet_libraries()
    cache = pipeline_cache(chosen_backend)
    with progress_bar("generating") as progress:
        task = progress.add_task("generating", total=None, info=request.model)
        result = run(request, cache, on_step=lambda done, total: progress.update(task, completed=done, total=total))
    for path in save_result(result, out, placement=cache.placement):
        typer.echo(str(path))


from difflab.batch_cli import batch_command, replay_command  # noqa: E402  (typer only)
app.command("replay")(replay_command)
app.command("batch")(batch_command)
from difflab.merge_cli import merge_command  # noqa: E402  (typer only)
app.command("merge")(merge_command)
from difflab.xyz_cli import xyz_command  # noqa: E402  (typer only)
app.command("xyz")(xyz_command)
from difflab.upscale_cli import upscale_command  # noqa: E402  (typer only)
app.command("upscale")(upscale_command)


@app.command("pull")
@user_errors
def pull_model(name: str = typer.Argument(..., help="A preset (sdxl, flux-schnell, ...) or a hub id.")) -> None:
    """Download a model's safetensors weights into the Hugging Face cache, for offline use later."""
    from difflab.engine.registry import pull

    typer.echo(str(pull(name)))


@app.command("serve")
@user_errors
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; beyond loopback an --api-token is required."),
    port: int = typer.Option(7860, help="TCP port (7860 is A1111's, so its clients find the server)."),
    data_dir: Path = typer.Option(Path("outputs/serve"), help="Job queue (SQLite) and images; keep it to keep "
                                                            "the queue across restarts."),
    max_queue: int = typer.Option(100, help="Waiting jobs; one more is answered 429 with Retry-After."),
    api_token: Optional[str] = typer.Option(None, envvar="DIFFLAB_API_TOKEN", help="Require 'Authorization: "
                                            "Bearer TOKEN' on every request (prefer the environment variable)."),
    models_dir: Optional[Path] = typer.Option(None, help="Folder of diffusers model folders, offered by name."),
    loras_dir: Optional[Path] = typer.Option(None, help="Folder of LoRAs offered by name [default: "
                                             "$DIFFLAB_LORA_DIR or ./loras]."),
    default_model: str = typer.Option("tiny-shapes", help="The model A1111 clients get when they name none."),
    max_body_mb: float = typer.Option(8.0, help="Largest request body accepted, in MB."),
    ui: bool = typer.Option(False, "--ui/--no-ui", help="Mount the Gradio web UI at /ui (needs Gradio)."),
    preview_every: Optional[int] = typer.Option(None, help="Step previews in the progress events every N steps "
                                                "(a VAE decode each; 0 = off) [default: 4 with --ui, else 0]."),
    batch: bool = typer.Option(False, "--batch/--no-batch", help="Run compatible queued jobs (same settings but "
                               "prompt, negative prompt, seed, n) as one pipeline call; images equal alone within "
                               "1/255 on CPU."),
    batch_max_images: int = typer.Option(8, help="Images per merged call with --batch."),
    keep_days: float = typer.Option(30.0, help="Retention: finished jobs older than this many days are removed "
                                    "with their images, and uploads no job uses once as old (0 = keep all)."),
    keep_gb: float = typer.Option(10.0, help="Retention: past this many GB of images the oldest finished jobs "
                                  "are removed (0 = no cap). Queued and running jobs are never touched."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    precision: str = typer.Option("f32", "--precision", help=PRECISION_HELP),
    compile_unet: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile each model's U-Net once: "
                                 "the first image waits for the compile, later ones are faster; compiled code is "
                                 "cached on disk for the next start (bench/results/compile.md)."),
) -> None:
    """Serve the engine over HTTP: /v1 job API, A1111-compatible /sdapi/v1, OpenAPI at /docs, web UI at /ui."""
    from difflab.serve.config import ServeConfig

    config = ServeConfig(data_dir=data_dir, host=host, port=port, max_queue=max_queue, api_token=api_token,
                         models_dir=models_dir, loras_dir=loras_dir, default_model=default_model,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), ui=ui, preview_every=preview_every,
                         batch=batch, batch_max_images=batch_max_images, keep_days=keep_days, keep_gb=keep_gb,
                         backend=backend, precision=precision, compile=compile_unet)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        fail("difflab serve needs FastAPI and uvicorn: pip install 'difflab[serve]'")
    from difflab.serve.app import serve

    if compile_unet:
        from difflab.engine.compile import enable_disk_caches, notice

        typer.echo(notice(enable_disk_caches()), err=True)
    serve(config)


@app.command("explain")
@user_errors
def explain_command(
    topic: Optional[str] = typer.Argument(None, help="forward-process, schedulers, guidance, latent-space, vae, "
                                          "clip-skip, lora or controlnet; leave out to list them."),
    out: Path = typer.Option(Path("outputs/explain"), "--out", "-o", help="Folder for the figure."),
    model: str = typer.Option("tiny-shapes", help="Text-to-image model of guidance, latent-space, vae, clip-skip, "
                              "lora, controlnet."),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="Digits checkpoint of forward-process and "
                                    "schedulers [default: the bundled digits model]."),
    seed: int = typer.Option(0),
) -> None:
    """A short walk-through of one idea that runs the real code and saves a figure (its path is the last line)."""
    from difflab.explain import TOPICS, explain

    if topic is None:
        for item in TOPICS.values():
            typer.echo(f"{item.name:<16} {item.summary} ({item.model_kind} model)")
        return
    from difflab.explain import resolve_topic

    chosen = resolve_topic(topic)  # an unknown topic fails first
    check_output(out)
    if chosen.model_kind == "text-to-image":
        quiet_libraries()
    for line in explain(topic, out, model=model, digits=checkpoint, seed=seed):
        typer.echo(line)


# The lab pictures made in other modules, after the ones above so `difflab viz --help` lists them in lab order
from difflab.eval.cli import guidance_sweep_command  # noqa: E402  (typer only)
from difflab.viz.sweep_commands import control_scale_command, lora_weights_command  # noqa: E402  (typer only)

viz_app.command("guidance")(guidance_sweep_command)  # the same command as `difflab eval guidance-sweep`
viz_app.command("control-scale")(control_scale_command)
viz_app.command("lora-weights")(lora_weights_command)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
