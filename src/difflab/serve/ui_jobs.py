"""What the web UI's handlers do, without Gradio: form values -> a request body, submit and follow a job, an
image's metadata, PNG Info -> form values, the history of finished jobs.

Everything goes through the API's own pieces (``routes.validated_request``, the JobStore, the worker), so the UI
can do nothing the API cannot, and a job the UI submits is ordered, persisted and recorded like any other.
"""

from __future__ import annotations

import io
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

MODEL_DEFAULT = "model default"  # the sampler box's first choice: the request leaves ``scheduler`` out
RANDOM_SEED = -1  # A1111's convention: -1 draws a seed, the drawn one is shown and recorded
_JOB_ID = re.compile(r"job ([0-9a-f]{32})")


def draw_seed(seed: int, n: int) -> int:
    """``seed``, or a random one when it is -1 (image i uses seed + i, so the draw leaves room for n images)."""
    from difflab.engine.request import MAX_SEED

    return random.SystemRandom().randrange(MAX_SEED + 1 - n) if int(seed) == RANDOM_SEED else int(seed)


def sampler_field(sampler: Optional[str]) -> Optional[str]:
    return None if not sampler or sampler == MODEL_DEFAULT else sampler


def hires_fields(enabled: bool, scale: float, strength: float, steps: int,
                 upscaler: Optional[str] = None) -> dict[str, Any]:
    """The hires fix's request fields when the box is ticked; ``steps`` 0 means "the same as the first pass"."""
    if not enabled:
        return {}
    return {"hires_scale": float(scale), "hires_strength": float(strength),
            "hires_steps": int(steps) if steps else None, "hires_upscaler": upscaler or None}


NO_REFINER = "None"


def refiner_fields(refiner: Optional[str], switch: float) -> dict[str, Any]:
    """The SDXL refiner's request fields when a refiner model is picked."""
    if not refiner or refiner == NO_REFINER:
        return {}
    return {"refiner": refiner, "refiner_switch": float(switch)}


def editor_images(value: Optional[dict[str, Any]]) -> tuple[Any, Any]:
    """(init image RGB, mask L or None) from a gr.ImageEditor value (PIL images): the background is the init
    image, and whatever the brush painted on any layer (alpha > 0) is the mask, white = redraw."""
    from PIL import Image

    background = (value or {}).get("background")
    if background is None:
        return None, None
    background = background.convert("RGB")
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != background.size:  # a canvas larger than the image: the image sits at its top left
            alpha = alpha.crop((0, 0, *background.size))
        mask.paste(255, mask=alpha.point(lambda a: 255 if a else 0))
    return background, (mask if mask.getbbox() else None)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Update:
    """One report while a job runs: ``paths`` is set once it is done; ``preview`` (a PIL image) when the worker
    made a new step preview since the last report (serve.previews, ``--preview-every``)."""

    job_id: str
    status: str
    paths: Optional[list[str]] = None
    step: int = 0
    steps: Optional[int] = None
    preview: Any = None


def progress_html(step: int, steps: Optional[int]) -> str:
    """The progress bar under the Generate button: an HTML <progress> (indeterminate while queued)."""
    if not steps:
        return '<progress class="difflab-progress" style="width:100%"></progress>'
    return (f'<progress class="difflab-progress" style="width:100%" value="{min(step, steps)}" max="{steps}">'
            f"</progress>")


def preview_image(preview) -> Any:
    """A serve.previews.Preview as a PIL image."""
    import base64

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(preview.png_base64)))
    image.load()
    return image


def run_job(server, body: dict[str, Any], poll_s: float = 0.1) -> Iterator[Update]:
    """Validate and queue ``body`` as the API does, then report until the job ends. Raises FieldError,
    ValidationError or QueueFull for a request that cannot be queued, ValueError for a job that failed."""
    from difflab.serve.routes import validated_request

    request = validated_request(server, body)
    job = server.store.submit(request.model_dump(mode="json"), max_queue=server.config.max_queue, source="ui")
    shown_step = None  # the step of the preview last sent: a preview goes to the browser once
    while not job.is_finished:
        position = server.store.position(job)
        status = (f"queued ({position} ahead)" if job.state == "queued"
                  else f"step {job.step}/{job.steps or '?'}")
        preview = server.worker.previews.latest(job.id)
        fresh = preview is not None and preview.step != shown_step
        if fresh:
            shown_step = preview.step
        yield Update(job.id, f"job {job.id}: {status}", step=job.step, steps=job.steps,
                     preview=preview_image(preview) if fresh else None)
        time.sleep(poll_s)
        job = server.store.get(job.id)
    if job.state == "cancelled":
        yield Update(job.id, f"job {job.id}: interrupted", [])
        return
    if job.state != "done":
        raise ValueError(f"job {job.id} {job.state}: {job.error or ''}")
    paths = [str(server.config.images_dir / image["file"]) for image in job.images]
    seeds = ", ".join(str(image["seed"]) for image in job.images)
    yield Update(job.id, f"job {job.id}: done, {len(paths)} image(s), seed {seeds}", paths, job.steps or 0,
                 job.steps)


def interrupt(server, status: str) -> str:
    """Cancel the job named in the status line (queued: at once; running: at its next step), else the running
    job, as A1111's Interrupt button stops whatever runs."""
    match = _JOB_ID.search(status or "")
    job_id = match.group(1) if match else (server.worker.current.id if server.worker.current else None)
    job = server.store.get(job_id) if job_id else None
    if job is None or job.is_finished:
        return "nothing to interrupt"
    server.store.cancel(job.id)
    return f"job {job.id}: interrupting"


def describe(path: str) -> dict[str, Any]:
    """An image's metadata as the panel shows it: its own seed, the A1111 parameters and difflab's request."""
    from difflab.engine.metadata import parse_parameters, read_png_metadata

    parameters, record = read_png_metadata(path)
    settings = parse_parameters(parameters)[2] if parameters else {}
    seed = settings.get("Seed")
    return {"seed": int(seed) if seed and seed.isdigit() else None, "parameters": parameters,
            "request": (record or {}).get("request")}


def form_from_parameters(text: str) -> dict[str, Any]:
    """The form values an A1111 ``parameters`` text sets (ours or A1111's own): only the keys it has."""
    from difflab.engine.metadata import parse_lora_tags, parse_parameters
    from difflab.engine.schedulers import resolve_sampler

    prompt, negative, settings = parse_parameters(text or "")
    prompt, loras = parse_lora_tags(prompt)  # <lora:NAME:W> tags go to the LoRA picker
    values: dict[str, Any] = {"prompt": prompt, "negative": negative}
    if loras:
        values["loras"] = [f"{name}:{weight:g}" for name, weight in loras]
    numbers = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int),
               "Denoising strength": ("strength", float), "Hires upscale": ("hires_scale", float)}
    for key, (name, kind) in numbers.items():
        try:
            values[name] = kind(settings[key])
        except (KeyError, ValueError):
            pass
    if "hires_scale" in values and "strength" in values:  # txt2img writes the hires pass's strength so
        values["hires_strength"] = values.pop("strength")
    size = re.fullmatch(r"(\d+)x(\d+)", settings.get("Size", ""))
    if size:
        values["width"], values["height"] = int(size.group(1)), int(size.group(2))
    sampler = settings.get("Sampler")
    if sampler:
        if settings.get("Schedule type", "").lower() == "karras" and not sampler.lower().endswith("karras"):
            sampler += " Karras"  # A1111 >= 1.9 writes the schedule apart from the sampler
        try:
            values["sampler"] = resolve_sampler(sampler).name
        except ValueError:
            values["sampler"] = MODEL_DEFAULT
    if settings.get("Model"):
        values["model"] = settings["Model"]
    return values


def history(server, limit: int = 50) -> list[tuple[str, str]]:
    """(path, caption) of the images of the newest finished jobs, newest first: read from the JobStore, so the
    history is the same after a restart."""
    items = []
    for job in server.store.jobs(state="done", limit=limit):
        for image in job.images:
            path = Path(server.config.images_dir) / image["file"]
            if path.is_file():
                items.append((str(path), f"{job.request.get('prompt', '')[:40]} · seed {image['seed']}"))
    return items


def dumps(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, indent=1)


def read_png(path: str) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """(A1111 parameters, difflab record) of any PNG: the same reader as ``difflab replay`` and /png-info."""
    from difflab.engine.metadata import read_png_metadata

    return read_png_metadata(path)
