"""Prior-preservation images: what the base model draws for prompts it should keep drawing after fine-tuning.

DreamBooth (Ruiz et al. 2022) trains on the new concept's images and, in the same step, on images the base model
made for its "class" prompts, so the fine-tuned model keeps the class's look; diffusers' train_dreambooth_lora.py
generates them when ``--class_data_dir`` holds too few, kohya-ss calls them regularization images. This writes
such a folder (``0000.png`` + ``0000.txt``, the layout ``--data`` reads) through the generation engine, so the
images are the ones ``difflab generate`` gives for the same prompts and seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from difflab.data.captioned_folder import CAPTION_SUFFIX


def write_prior_images(model: str, prompts: Sequence[str], folder: str | Path, *, seed: int = 0,
                       cache: Optional[Any] = None, **settings: Any) -> list[Path]:
    """One image per prompt (prompt i with seed ``seed + i``) from ``model``, written with its prompt as caption.

    Images already in ``folder`` with the same caption are kept, so an interrupted run picks up where it was.
    ``settings`` are further GenerationRequest fields (guidance, steps, scheduler, ...)."""
    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.viz.grid import png_bytes

    if not prompts:
        raise ValueError("prompts must not be empty")
    folder = Path(folder)
    cache = cache if cache is not None else PipelineCache()
    written = []
    for index, prompt in enumerate(prompts):
        image_path = folder / f"{index:04d}.png"
        caption_path = image_path.with_suffix(CAPTION_SUFFIX)
        done = image_path.is_file() and caption_path.is_file() and caption_path.read_text().strip() == prompt
        if not done:
            request = build_request(prompt=prompt, model=model, n=1, seed=seed + index, **settings)
            atomic_write_bytes(image_path, png_bytes(run(request, cache).images[0]))
            atomic_write_bytes(caption_path, (prompt + "\n").encode())
        written.append(image_path)
    return written
