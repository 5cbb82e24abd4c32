"""``difflab upscale``: A1111's "Extras" upscaling over difflab.engine.upscalers.

Registered on the main app in cli.py; only typer is imported here so ``difflab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer


def upscale_command(
    images: list[Path] = typer.Argument(..., help="Images to upscale (PNG, JPEG, WebP)."),
    upscaler: str = typer.Option(..., "--upscaler", "-u", help="Lanczos, Nearest, or an ESRGAN / Real-ESRGAN "
                                 "file: a path, or a name in $DIFFLAB_UPSCALER_DIR (default ./upscalers)."),
    scale: float = typer.Option(2.0, help="Output size / input size, 1 to 8 (a network runs as often as needed, "
                                "then Lanczos lands on the exact size)."),
    tile: int = typer.Option(192, help="Tile side in input pixels for networks (memory), 32 to 2048."),
    out: Path = typer.Option(Path("outputs/upscaled"), "--out", "-o", help="Output folder; files are never "
                             "replaced (NAME-upscaled.png, then NAME-upscaled-1.png, ...)."),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle", help="Load a .pth/.pt upscaler "
                                             "(pickles can run code; read with weights_only)."),
) -> None:
    """Upscale images with a resampler or an ESRGAN-family network, tiled; the PNG keeps the input's parameters and
    adds A1111's "Postprocess upscaler" and "Postprocess upscale by"."""
    from difflab.cli import fail, progress_bar, quiet_libraries

    quiet_libraries()

    try:
        from difflab.engine.upscalers.extras import check_inputs, upscale_files
        from difflab.engine.upscalers.registry import resolve_upscaler

        if not 1.0 <= scale <= 8.0:
            fail(f"--scale must be in [1, 8]; got {scale:g}")
        if not 32 <= tile <= 2048:
            fail(f"--tile must be in [32, 2048]; got {tile}")
        resolved = resolve_upscaler(upscaler, field="--upscaler")
        check_inputs(images, scale, out)  # every input readable and within the size limit, --out writable: first
        if resolved.is_network:
            from difflab.engine.upscalers.registry import network_of

            network_of(resolved, allow_unsafe_pickle)  # a bad file is named before any image is read
        with progress_bar("upscaling") as progress:
            task = progress.add_task("upscaling", total=len(images), info=resolved.name)
            written = upscale_files(images, resolved, scale, out, tile=tile, allow_unsafe_pickle=allow_unsafe_pickle,
                                    on_image=lambda done: progress.update(task, completed=done))
    except ValueError as error:
        fail(str(error))
    for path in written:
        typer.echo(str(path))
