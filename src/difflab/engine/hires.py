"""Hires fix: generate at the model's size, upscale the image, then redraw it with img2img at the large size.

A1111's recipe (its "Hires. fix" with the Lanczos upscaler): the first pass fixes the composition at the size the
model was trained for, the img2img pass at ``hires_strength`` adds detail at the large size without the repeated
subjects a model draws when asked for a size it never saw. Upscaling is done on the decoded image (Lanczos), not on
the latents, so the second pass starts from a clean image. ``hires_upscaler`` picks A1111's upscaler: Lanczos (the
default), Nearest, or an ESRGAN-family network (engine/upscalers), run tiled, then resized to the exact size. ``hires_steps`` plays A1111's "Hires steps": the second
pass runs ``int(hires_steps * hires_strength)`` denoising steps, like any img2img.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from difflab.engine.modes import hires_size, hires_strength_of

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from difflab.engine.pipeline import Settings

UPSCALER = "Lanczos"  # A1111's default "Hires upscaler"


def upscaler_of(request):
    """The request's hires upscaler (engine.upscalers.registry.ResolvedUpscaler), Lanczos by default."""
    from difflab.engine.upscalers.registry import resolve_upscaler

    return resolve_upscaler(request.hires_upscaler or UPSCALER, field="hires_upscaler")


def upscale(images: list["Image.Image"], width: int, height: int, upscaler=None) -> list["Image.Image"]:
    from difflab.engine.upscalers.registry import resolve_upscaler, upscale as upscale_one

    upscaler = upscaler or resolve_upscaler(UPSCALER)
    return [upscale_one(image, upscaler, width, height) for image in images]


def hires_pass(img2img, images: list["Image.Image"], settings: "Settings", kwargs: dict[str, Any]) -> list:
    """Upscale ``images`` by ``hires_scale`` and redraw them with the img2img pipeline ``img2img``."""
    from difflab.engine.pipeline import generators_for

    request = settings.request
    width, height = hires_size(settings.width, settings.height, request.hires_scale)
    # a new scheduler of the same kind: the first pass left its state (step index, multistep history) behind
    img2img.scheduler = type(img2img.scheduler).from_config(img2img.scheduler.config)
    call = {key: value for key, value in kwargs.items() if key not in ("width", "height", "denoising_end", "output_type")}
    call.update(
        image=upscale(images, width, height, upscaler_of(request)), strength=hires_strength_of(request),
        num_inference_steps=request.hires_steps or settings.steps,
        # fresh generators seed + i (A1111 reuses the seed for the hires noise); one image per generator
        generator=generators_for(request.seed, len(images)), num_images_per_prompt=len(images),
    )
    return img2img(**call).images

