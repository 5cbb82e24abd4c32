"""``difflab explain latent-space``: what the VAE compresses, as the U-Net sees it."""

from __future__ import annotations

from typing import Iterator

from difflab.explain.common import Context, pipeline, save

SD_PIXELS, SD_LATENTS = (512, 512, 3), (64, 64, 4)  # Stable Diffusion 1.x at its native size


def run(ctx: Context) -> Iterator[str]:
    from difflab.data.shapes import ShapeSpec, render
    from difflab.viz.latents import latent_grid, vae_round_trip

    model, loaded = pipeline(ctx)
    specs = [ShapeSpec("circle", "red", "white", "centre", "large"),
             ShapeSpec("star", "yellow", "blue", "left", "large"),
             ShapeSpec("square", "green", "black", "right", "small")]
    images = [render(spec, resolution=model.width) for spec in specs]
    trip = vae_round_trip(loaded.vae, images)
    height, width = trip.images.shape[-2:]
    latent_shape = "x".join(str(s) for s in trip.latents.shape[1:])
    yield "Latent diffusion runs the denoiser on an autoencoder's compressed latents, not on pixels."
    yield f"{ctx.model}: a {width}x{height}x3 image ({trip.pixel_values} numbers) -> latents {latent_shape} " \
          f"({trip.latent_values} numbers), {trip.pixel_values / trip.latent_values:.0f}x fewer; " \
          f"{width // trip.latents.shape[-1]}x smaller per side."
    yield f"Decoding the latents gives the image back with an RMS error of {trip.rms_error:.3f} (0..1 pixel scale)."
    positions = SD_PIXELS[0] * SD_PIXELS[1] // (SD_LATENTS[0] * SD_LATENTS[1])
    numbers = SD_PIXELS[0] * SD_PIXELS[1] * SD_PIXELS[2] / (SD_LATENTS[0] * SD_LATENTS[1] * SD_LATENTS[2])
    yield "Every U-Net step costs in proportion to the latent size: SD's VAE (8x per side, 512x512x3 -> 64x64x4)"
    yield f"leaves {positions}x fewer positions ({numbers:.0f}x fewer numbers) to denoise at every step; the VAE " \
          "runs once, at the end."
    yield "`difflab explain vae` measures what the round trip loses, shape by shape."
    yield "figure (rows: three pictures; columns: the image, each latent channel, the decoded image):"
    labels = [f"{spec.size} {spec.shape}" for spec in specs]
    yield str(save(latent_grid(trip, row_labels=labels), ctx, "latent-space.png"))
