"""Writing generated images: PNG files with A1111 parameters and the full difflab record, atomically."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from difflab.engine.lora import lora_hash
from difflab.engine.metadata import format_lora_hashes, format_parameters, lora_prompt_tags, png_info
from difflab.engine.modes import infotext_settings, record_settings
from difflab.engine.device import Placement
from difflab.engine.pipeline import Result, Settings


def model_hash(path: Path) -> str:
    """Cached per (path, modification time): hashing a 5 GB U-Net takes seconds, and it is the same every image."""
    weights = _weights_file(path)
    return "" if weights is None else weights_hash(weights)


def weights_hash(file: Path) -> str:
    """A1111's short hash of one weights file (the first 10 hex digits of its SHA-256), for models and
    ControlNets alike; cached per (path, modification time)."""
    from difflab.io.hashing import cached_file_sha256

    return cached_file_sha256(file)[:10]


def _weights_file(path: Path) -> Path | None:
    """A1111's short model hash (first 10 hex digits of the SHA-256 of the weights file). For a diffusers folder,
    the hash of its U-Net (or transformer) weights, which is what distinguishes one fine-tune from another."""
    if path.is_dir():
        candidates = sorted(path.glob("unet/*.safetensors")) or sorted(path.glob("transformer/*.safetensors"))
        return candidates[0] if candidates else None
    return path


def own_sampler_name(path: Path) -> str | None:
    """The A1111 name of a diffusers folder's own scheduler (its scheduler_config.json), when it is one A1111 has."""
    import json

    from difflab.engine.schedulers import sampler_name_of

    config_file = Path(path) / "scheduler" / "scheduler_config.json"
    try:
        return sampler_name_of(json.loads(config_file.read_text()))
    except (OSError, ValueError):
        return None  # a single-file checkpoint or an unreadable config: the PNG says "model default"


def a1111_settings(settings: Settings, seed: int, hash_: str) -> dict[str, Any]:
    return {
        "Steps": settings.steps,
        "Sampler": settings.scheduler or own_sampler_name(settings.model.path) or "model default",
        "CFG scale": settings.guidance,
        "Seed": seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": hash_ or None,
        "Model": settings.model.name if not Path(settings.model.name).exists() else Path(settings.model.name).name,
        **infotext_settings(settings),  # Denoising strength, Hires upscale, ... (img2img, inpainting, hires fix)
        "Version": f"difflab {_version()}",
    }


def record(settings: Settings, seed: int, index: int, placement: Placement | None = None) -> dict[str, Any]:
    """Everything needed to regenerate image ``index``: the request, the filled-in settings, versions and where it
    ran. ``request.n`` with ``image_index`` is the batch layout: CPU kernels are not batch-invariant, so replay
    re-runs the whole request to get image ``index`` bit-identically."""
    import diffusers
    import torch
    import transformers

    return {
        "request": settings.request.model_dump(),
        "image_index": index,  # image i of the request; it was drawn with seed + i
        "seed": seed,
        "settings": {"width": settings.width, "height": settings.height, "steps": settings.steps,
                     "guidance": settings.guidance, "guidance_end": settings.guidance_end,
                     "scheduler": settings.scheduler,
                     "family": settings.model.family, "model_path": str(settings.model.path)},
        "mode": record_settings(settings),  # txt2img/img2img/inpaint, init image and mask hashes, refiner, hires
        "versions": {"difflab": _version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        # kernels differ between devices, dtypes and CPU instruction sets: replay warns when these differ
        "environment": {"device": placement.describe() if placement else None, "machine": platform.machine(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }


def save_result(result: Result, folder: str | Path, prefix: str = "", placement: Placement | None = None) -> list[Path]:
    """One PNG per image, numbered as A1111 numbers them (``00012-1234.png``: the next free counter in the folder,
    then the seed; difflab.output_files); no earlier file is ever replaced, and a folder that fails part way sends
    the rest to a rescue folder (``OutputWriteError`` says where).

    With a ``prefix`` (the server's job id) the names are ``{prefix}{seed}-{index}.png`` instead: a job re-run
    after a crash replaces its own half-finished files, never duplicates them; job ids never repeat."""
    folder = Path(folder)
    if prefix:
        from difflab.core.checkpoint import atomic_write_bytes

        paths = []
        for index, seed in enumerate(result.seeds):
            path = folder / f"{prefix}{seed:010d}-{index:02d}.png"
            atomic_write_bytes(path, image_png(result, index, placement))
            paths.append(path)
        return paths
    from difflab.output_files import save_new_images

    return save_new_images(folder, ((seed, image_png(result, index, placement)) for index, seed in enumerate(result.seeds)))


def image_png(result: Result, index: int, placement: Placement | None = None) -> bytes:
    """The PNG file of image ``index`` with both metadata chunks; the same bytes for the same image and request."""
    from difflab.viz.grid import png_bytes

    settings, seed = result.settings, result.seeds[index]
    fields = a1111_settings(settings, seed, model_hash(settings.model.path))
    full_record = record(settings, seed, index, placement)
    prompt = settings.request.prompt
    if result.loras:  # A1111 writes LoRAs as <lora:name:weight> in the prompt and their hashes in the settings
        pairs = [(lora.name, lora.weight) for lora in result.loras]
        prompt += lora_prompt_tags(pairs)
        fields = {**{k: v for k, v in fields.items() if k != "Version"},
                  "Lora hashes": format_lora_hashes([(lora.name, lora_hash(lora.file)) for lora in result.loras]),
                  "Version": fields.get("Version")}
        full_record["loras"] = [{"name": lora.name, "weight": lora.weight, "file": str(lora.file),
                                 "format": lora.format, "hash": lora_hash(lora.file)} for lora in result.loras]
    if result.controls:  # sd-webui-controlnet's "ControlNet N" units before Version, and the full record
        from difflab.engine import control_run

        fields = {**{k: v for k, v in fields.items() if k != "Version"},
                  **control_run.infotext(settings, result.controls), "Version": fields.get("Version")}
        full_record["controls"] = control_run.record(settings, result.controls)
    full_record["backend"] = result.backend.record()  # engine/backends: replay runs the same one
    if not result.backend.is_torch:  # difflab's key, before Version like A1111's extensions write theirs
        fields = {**{k: v for k, v in fields.items() if k != "Version"}, "Backend": result.backend.describe(),
                  "Version": fields.get("Version")}
    if result.batch is not None:  # drawn in one call with other requests (engine.merged): where it sat
        full_record["batch"] = result.batch.to_json()
    if result.compiled:  # torch.compile'd U-Net: pixels may differ from eager by rounding (within 1/255)
        full_record["environment"]["compile"] = "torch.compile (inductor): U-Net"
    parameters = format_parameters(prompt, settings.request.negative_prompt, fields)
    return png_bytes(result.images[index], pnginfo=png_info(parameters, full_record))


def _version() -> str:
    from difflab import __version__

    return __version__
