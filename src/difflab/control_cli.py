"""``difflab control``: ControlNet helpers. Thin: parse, call engine.control, write the map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

control_app = typer.Typer(help="ControlNet: make control maps (canny, scribble, soft edges, depth, pose).",
                          no_args_is_help=True)


@control_app.command("preprocess")
def preprocess_command(
    kind: str = typer.Argument(..., help="canny, scribble, softedge, depth, pose, or none (the image as it is)."),
    image: Path = typer.Argument(..., help="The picture to read."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write the map to."),
    low: Optional[int] = typer.Option(None, help="canny: low hysteresis threshold [100]; scribble: threshold [32]."),
    high: Optional[int] = typer.Option(None, help="canny: high hysteresis threshold [200]."),
    width: Optional[int] = typer.Option(None, help="Resize the picture first (the output size of a generation)."),
    height: Optional[int] = typer.Option(None, help="[default: the picture's, or --width in its proportions]"),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle", help="pose: load controlnet-aux's "
                                             ".pth weights (pickles can run code)."),
) -> None:
    """Show the map a ControlNet would see: ``difflab control preprocess canny photo.png -o edges.png``."""
    from difflab.cli import check_output, user_errors

    @user_errors
    def run() -> None:
        from difflab.engine.control import preprocess, resized
        from difflab.engine.modes import load_image
        from difflab.output_files import save_named_files
        from difflab.viz.grid import png_bytes

        spec = _spec(kind, str(image), low, high)
        if out.suffix.lower() != ".png":
            raise ValueError(f"out: {str(out)!r} must be a .png file")
        check_output(out, kind="file")  # before the picture is read and the preprocessor's model loads
        picture = load_image(str(image), "image")
        if width is not None or height is not None:
            target_width = width or round(picture.width * height / picture.height)
            target_height = height or round(picture.height * width / picture.width)
            if target_width < 8 or target_height < 8:
                raise ValueError(f"width: the size {target_width}x{target_height} is too small (at least 8x8)")
            picture = resized(picture, target_width, target_height, "image")
        low_, high_ = spec.thresholds()
        control_map = preprocess(spec.kind, picture, low_, high_, allow_unsafe_pickle=allow_unsafe_pickle)
        save_named_files(out.parent, {out.name: png_bytes(control_map)})
        typer.echo(str(out))

    run()


def _spec(kind: str, image: str, low: Optional[int], high: Optional[int]):
    """The same validation as a generation's control, with its messages naming the option."""
    from pydantic import ValidationError

    from difflab.engine.control import ControlSpec
    from difflab.engine.request import describe_validation_error

    try:
        return ControlSpec(kind=kind, image=image, low=low, high=high)
    except ValidationError as error:
        raise ValueError(describe_validation_error(error)) from None


def controls_from_options(controls: list[str], models: list[str]) -> list[dict]:
    """``--control KIND:IMAGE[:SCALE]`` options with the i-th ``--control-model`` as their ``model``."""
    from difflab.engine.control import parse_control

    if len(models) > len(controls):
        raise ValueError(f"control_model: {len(models)} given for {len(controls)} --control; give one per control "
                         "at most, in the same order")
    specs = []
    for index, text in enumerate(controls):
        try:
            spec = parse_control(text)
        except ValueError as error:
            raise ValueError(f"controls.{index}: {error}") from None
        if index < len(models):
            spec["model"] = models[index]
        specs.append(spec)
    return specs
