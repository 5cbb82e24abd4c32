"""``difflab explain TOPIC``: a short terminal walk-through of one idea that runs the real code and saves a figure.

Each topic (one module here) is a generator of lines (so the terminal shows them as the work happens) that ends
with the figure's path. Pixel-space topics run on the bundled digits model; text-to-image topics on a
text-to-image model (the bundled tiny-shapes by default), with a clear error when that model is not on this
machine. Everything calls the same functions the labs and the ``difflab viz`` commands use; nothing is simulated.
Every sentence that states a result is made from the numbers printed beside it (each topic's ``sentences``), and
every grid labels its rows and columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from difflab.explain import clip_skip, controlnet, forward_process, guidance, latent_space, lora, schedulers, vae
from difflab.explain.common import Context, Topic

DIGITS_SUBDIR = "digits"

TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic("forward-process", "noising to any step in one jump, and the model undoing it", forward_process.run,
          "digits"),
    Topic("schedulers", "samplers and step counts, with measured quality and time", schedulers.run, "digits"),
    Topic("guidance", "classifier-free guidance: on-prompt versus varied", guidance.run, "text-to-image"),
    Topic("latent-space", "what the VAE compresses and gives back", latent_space.run, "text-to-image"),
    Topic("vae", "the VAE's round trip, and what a VAE swap must keep", vae.run, "text-to-image"),
    Topic("clip-skip", "reading the prompt from earlier text-encoder layers", clip_skip.run, "text-to-image"),
    Topic("lora", "why a LoRA is so much smaller than the model", lora.run, "text-to-image"),
    Topic("controlnet", "steering the layout with a map: with and without control", controlnet.run,
          "text-to-image", controlnet.check),
)}
ALIASES = {"forward": "forward-process", "samplers": "schedulers", "cfg": "guidance", "latent": "latent-space",
           "latents": "latent-space", "control": "controlnet", "clipskip": "clip-skip"}


def resolve_topic(name: str) -> Topic:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in TOPICS:
        raise ValueError(f"topic must be one of {', '.join(TOPICS)}; got {name!r}")
    return TOPICS[key]


def explain(topic: str, out: str | Path, *, model: str = "tiny-shapes", digits: Optional[Path] = None,
            seed: int = 0) -> Iterator[str]:
    """Lines of the walk-through; the last line is the figure's path. ValueError for an unknown topic or a missing
    model (before anything is written)."""
    chosen = resolve_topic(topic)
    digits = digits if digits is not None else bundled_digits()
    if chosen.model_kind == "text-to-image":
        from difflab.engine.registry import resolve_model

        try:
            resolve_model(model)
            if chosen.check is not None:
                chosen.check(model)
        except ValueError as error:
            raise ValueError(f"topic {chosen.name} runs on a text-to-image model: {error}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yield from chosen.run(Context(out, model, Path(digits), seed))


def bundled_digits() -> Path:
    from difflab.engine.registry import BUNDLED_DIR

    return BUNDLED_DIR / DIGITS_SUBDIR
