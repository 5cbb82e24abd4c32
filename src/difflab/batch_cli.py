"""``difflab replay`` and ``difflab batch``: thin fronts over difflab.engine.replay and difflab.engine.batch.

Registered on the main app in cli.py; only typer is imported here so ``difflab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def replay_command(
    image: Path = typer.Argument(..., help="A PNG made by difflab (or with A1111 'parameters' metadata)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the regenerated PNG to this folder "
                                       "(numbered like generate's, NNNNN-SEED.png; nothing is replaced)."),
    check: bool = typer.Option(False, "--check", help="Exit with status 1 unless the result is bit-identical."),
    model: Optional[str] = typer.Option(None, help="Use this model instead of the recorded one (moved folder, A1111 name)."),
    alone: bool = typer.Option(False, "--alone", help="Regenerate only this image (n=1, its own seed) instead of "
                                                      "re-running its batch: faster, but not bit-identical where "
                                                      "kernels depend on batch size (CPUs)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch or openvino [default: the recorded one]."),
    precision: Optional[str] = typer.Option(None, "--precision", help="f32 or bf16 (openvino) [default: the "
                                            "recorded one]."),
) -> None:
    """Regenerate an image from its embedded metadata and compare it with the original, pixel by pixel."""
    from difflab.cli import check_output, progress_bar, quiet_libraries, user_errors

    @user_errors
    def run() -> None:
        check_output(out)  # before the model loads: a bad --out is found now, not after the work
        from difflab.engine.backends import pipeline_cache, replay_backend
        from difflab.engine.replay import model_warnings, plan_replay, replay

        chosen_backend, backend_warnings = replay_backend(image, backend, precision)  # the recorded one by default
        quiet_libraries()
        cache = pipeline_cache(chosen_backend)
        plan = plan_replay(image, model=model, alone=alone, placement=cache.placement)
        for warning in (*plan.warnings, *backend_warnings, *model_warnings(plan)):
            typer.echo(f"warning: {warning}", err=True)
        with progress_bar("replaying") as progress:
            task = progress.add_task("replaying", total=None, info=f"{plan.source}, image {plan.index} of {plan.request.n}")
            outcome = replay(plan, cache, on_step=lambda done, total: progress.update(task, completed=done, total=total))
        if out is not None:
            from difflab.output_files import save_new_images

            [path] = save_new_images(out, [(plan.request.seed + plan.index, outcome.png)])
            typer.echo(str(path))
        typer.echo(f"{image}: {outcome.comparison.describe()}")
        if check and not outcome.comparison.identical:
            raise typer.Exit(1)

    run()


def batch_command(
    prompts: Path = typer.Argument(..., help="Prompt file: .jsonl (one JSON object a line) or .csv (header = field names)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; rerun the same command on it to resume."),
    n: Optional[int] = typer.Option(None, "-n", help="Images per line where a line sets no n; image i uses seed + i."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt where a line sets none."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps where a line sets none (else the model's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale where a line sets none (else the model's)."),
    seed: Optional[int] = typer.Option(None, help="Seed where a line sets none (else 0)."),
    scheduler: Optional[str] = typer.Option(None, help="A1111 sampler where a line sets none, e.g. 'DPM++ 2M Karras'."),
    width: Optional[int] = typer.Option(None, help="Width (multiple of 8) where a line sets none (else the model's)."),
    height: Optional[int] = typer.Option(None, help="Height where a line sets none (else the model's)."),
    model: Optional[str] = typer.Option(None, help="Model where a line sets none: preset, hub id (cached), folder or .safetensors."),
    ray: bool = typer.Option(False, "--ray", help="Draw on Ray actors (the ray extra); this process writes the folder."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray: join this cluster "
                                              "(HOST:PORT, ray://HOST:PORT, auto) instead of starting one here."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, help="With --ray: actors, one pipeline "
                                              "each (default: one per GPU, else one per node)."),
    backend: str = typer.Option("torch", "--backend", help="torch or openvino, for every line (see generate --help)."),
    precision: str = typer.Option("f32", "--precision", help="OpenVINO precision: f32 or bf16."),
    compile_unet: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile each model's U-Net once: the "
                                 "first image waits for the compile, later ones are faster; pays for long files "
                                 "(bench/results/compile.md). Images within 1/255 of eager; cached on disk."),
) -> None:
    """Generate every request of a prompt file into a folder: PNGs, a manifest, a contact sheet; resumable.

    Fields of a line override the options. All lines are checked before anything is generated."""
    from difflab.cli import check_output, fail, progress_bar, quiet_libraries

    try:
        from difflab.engine.batch import ImageFinished, LineStarted, check_folder, plan_batch, run_batch, write_contact_sheets
        from difflab.engine.backends import check_request_fits, choose_backend, pipeline_cache
        from difflab.engine.batch_ray import RayBatchFailed, RayOptions, run_batch_ray

        chosen_backend = choose_backend(backend, precision)  # before any line is read or any weights load
        defaults = dict(n=n, negative_prompt=negative, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                        width=width, height=height, model=model)
        if not ray and (ray_address is not None or ray_workers is not None):
            raise ValueError(f"{'--ray-address' if ray_address is not None else '--ray-workers'} needs --ray")
        if ray and not chosen_backend.is_torch:  # the actors hold PyTorch pipelines; OpenVINO there is not built yet
            raise ValueError("backend: --ray draws with the torch backend only; drop --backend openvino, or run "
                             "the batch without --ray")
        if compile_unet and (ray or not chosen_backend.is_torch):  # compiles the U-Net of this process's cache
            raise ValueError("compile: --compile is for the torch backend in this process; it cannot go with "
                             f"{'--ray' if ray else '--backend openvino (OpenVINO compiles its own models)'}")
        plan = plan_batch(prompts, defaults, backend=chosen_backend, compile=compile_unet)  # --ray: torch, eager
        for line in plan.lines:  # a line the backend refuses fails now, before the first image
            check_request_fits(chosen_backend, line.request)
        check_output(out)  # a file or an unwritable place fails before any weights load
        check_folder(plan, out)  # before the first write: a refused folder is left as it was
        quiet_libraries()
        cache = pipeline_cache(chosen_backend, compile=compile_unet)
        options = RayOptions(address=ray_address, workers=ray_workers) if ray else None
        if compile_unet:
            from difflab.engine.compile import enable_disk_caches, notice

            typer.echo(notice(enable_disk_caches()), err=True)
        made = skipped = 0
        try:
            with progress_bar("batch") as progress:
                task = progress.add_task("batch", total=plan.total_images, info="")
                current = {"line": 0, "images": 0}

                def on_step(done: int, total: int) -> None:
                    progress.update(task, completed=made + skipped + current["images"] * done / total)

                for event in (run_batch(plan, out, cache, on_step=on_step) if options is None
                              else run_batch_ray(plan, out, options, on_step=on_step)):
                    if isinstance(event, LineStarted):
                        current.update(line=event.line, images=event.images)
                        progress.update(task, info=f"line {event.line}")
                    elif isinstance(event, ImageFinished):
                        skipped += event.skipped
                        made += not event.skipped
                        current["images"] -= not event.skipped
                        progress.update(task, completed=made + skipped)
            sheets = write_contact_sheets(plan, out)
        except OSError as error:  # the folder failed mid-run (disk full, removed): what is finished stays finished
            typer.echo(f"error: --out {str(out)!r}: could not write ({error.strerror or error}) after {made} "
                       "image(s) of this run; finished images are kept with whole manifest lines: rerun the same "
                       "command to resume once the folder can be written", err=True)
            raise typer.Exit(1) from None
        except RayBatchFailed as error:  # workers kept dying, or a line failed on one: finished images are kept
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
    except ValueError as error:
        fail(str(error))
    typer.echo(f"{made} images generated, {skipped} already finished; {plan.total_images} in {out}")
    for sheet in sheets:
        typer.echo(str(sheet))
