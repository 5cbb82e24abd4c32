"""The web UI (Gradio), mounted at ``/ui`` in the same app: a form over the same queue and worker as ``/v1``.

The UI submits GenerationRequests through the same validation (``routes.validated_request``) and the same
JobStore, so its jobs are ordered with API jobs, survive restarts, and produce the same PNGs with metadata.
Picking an image in the gallery shows its metadata, and "Reuse settings" puts them back in the form. LoRAs are
picked from the server's LoRA folder (``NAME`` takes the weight slider's value, ``NAME:WEIGHT`` its own); a
ControlNet image is uploaded into the server's inputs, as ``POST /v1/inputs`` would, and sent as one control.
Gradio is optional: without it the API runs and ``/ui`` is absent.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI

UI_PATH = "/ui"


def gradio_available() -> bool:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return False
    return True


def build_ui(app: FastAPI):
    """The Gradio Blocks; handlers find the server state on ``app`` when they run (it exists only after startup)."""
    import gradio as gr
    from pydantic import ValidationError

    from difflab.engine.control import KINDS, MAX_SCALE
    from difflab.engine.lora import parse_lora_spec
    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.request import describe_validation_error
    from difflab.engine.schedulers import SAMPLER_NAMES
    from difflab.serve.catalog import FieldError
    from difflab.serve.queue import QueueFull
    from difflab.serve.routes import validated_request

    def server():
        return app.state.server

    def model_choices() -> list[str]:
        from difflab.serve.routes import model_entries

        return [entry["name"] for entry in model_entries(server()) if entry["available"]]

    def lora_choices() -> list[str]:
        return list(server().catalog.loras())

    def generate(prompt, negative, model, sampler, steps, guidance, seed, width, height, n, loras, lora_weight,
                 control_image, control_kind, control_scale):
        body: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "model": model,
                                "scheduler": sampler or None, "steps": int(steps), "guidance": float(guidance),
                                "seed": int(seed), "width": int(width), "height": int(height), "n": int(n)}
        if loras:
            body["loras"] = [lora_with_weight(item, lora_weight) for item in loras]
        state = server()
        try:
            if control_image:
                body["controls"] = [{"kind": control_kind, "image": store_control(control_image),
                                     "scale": float(control_scale)}]
            request = validated_request(state, body)
            job = state.store.submit(request.model_dump(mode="json"), max_queue=state.config.max_queue, source="ui")
        except FieldError as error:
            raise gr.Error(str(error))
        except ValidationError as error:
            raise gr.Error(describe_validation_error(error))
        except QueueFull as error:
            raise gr.Error(str(error))
        # live progress: the same store the SSE stream reads
        while not job.is_finished:
            position = state.store.position(job)
            status = (f"queued ({position} ahead)" if job.state == "queued"
                      else f"step {job.step}/{job.steps or '?'}")
            yield gr.update(), f"job {job.id}: {status}", gr.update()
            time.sleep(0.1)
            job = state.store.get(job.id)
        if job.state != "done":
            raise gr.Error(f"job {job.id} {job.state}: {job.error or ''}")
        paths = [str(state.config.images_dir / image["file"]) for image in job.images]
        gallery = [(path, f"seed {image['seed']}") for path, image in zip(paths, job.images)]
        yield gallery, f"job {job.id}: done, {len(paths)} image(s)", describe(paths[0])

    def lora_with_weight(item: str, weight: float) -> str:
        """``NAME`` gets the slider's weight; ``NAME:WEIGHT`` keeps its own (engine.lora's NAME[:WEIGHT] syntax)."""
        item = item.strip()
        try:
            weighted = parse_lora_spec(item).source != item
        except ValueError:
            return item  # the request's validation names the field
        return item if weighted else f"{item}:{weight:g}"

    def store_control(path: str) -> str:
        from pathlib import Path

        from difflab.serve.inputs import store_image

        return store_image(server().catalog.inputs_dir, "control image", Path(path).read_bytes()).name

    def lora_names(specs: list[str]) -> list[str]:
        """A record's LoRAs are server paths with weights; the picker wants ``NAME:WEIGHT``."""
        from pathlib import Path

        names = []
        for text in specs:
            spec = parse_lora_spec(text)
            path = Path(spec.source)
            name = path.stem if path.suffix == ".safetensors" else path.name
            names.append(name if spec.source == text.strip() else f"{name}:{spec.weight:g}")
        return names

    def describe(path: str) -> str:
        parameters, record = read_png_metadata(path)
        return json.dumps({"parameters": parameters, "request": (record or {}).get("request")}, indent=1)

    def selected(evt: gr.SelectData, gallery) -> str:
        item = gallery[evt.index]
        path = item[0] if isinstance(item, (list, tuple)) else (item.get("image", {}) or {}).get("path", item)
        return describe(path if isinstance(path, str) else path["path"])

    def reuse(metadata: str):
        request = json.loads(metadata or "{}").get("request") or {}
        if not request:
            raise gr.Error("pick an image in the gallery first")
        name = request.get("model", "")
        control = (request.get("controls") or [{}])[0]
        models = model_choices()
        model = next((m for m in models if name == m or name.endswith("/" + m)
                      or server().catalog.model_path("model", m) == name), name)
        return (request["prompt"], request.get("negative_prompt", ""), model, request.get("scheduler") or "",
                request.get("steps") or 20, request.get("guidance") if request.get("guidance") is not None else 7.5,
                request.get("seed", 0), request.get("width") or 64, request.get("height") or 64, request.get("n", 1),
                lora_names(request.get("loras") or []), 1.0,
                gr.update(),  # the control image stays as it is: the record holds only its server path
                control.get("kind", "canny"), control.get("scale", 1.0))

    with gr.Blocks(title="difflab") as blocks:
        gr.Markdown("## difflab\nText-to-image over difflab's engine. Jobs share the server's queue with the API.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                with gr.Row():
                    model = gr.Dropdown(label="Model", choices=[], allow_custom_value=True, elem_id="model")
                    sampler = gr.Dropdown(label="Sampler", choices=["", *SAMPLER_NAMES], value="", elem_id="sampler")
                with gr.Row():
                    steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance (CFG)", elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    n = gr.Slider(1, 8, value=1, step=1, label="Images", elem_id="n")
                with gr.Row():
                    width = gr.Slider(8, 1024, value=64, step=8, label="Width", elem_id="width")
                    height = gr.Slider(8, 1024, value=64, step=8, label="Height", elem_id="height")
                with gr.Row():
                    loras = gr.Dropdown(label="LoRAs (NAME or NAME:WEIGHT)", choices=[], multiselect=True,
                                        allow_custom_value=True, elem_id="loras")
                    lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight", elem_id="lora_weight")
                with gr.Accordion("ControlNet", open=False):
                    control_image = gr.Image(label="Control image", type="filepath", elem_id="control_image")
                    with gr.Row():
                        control_kind = gr.Dropdown(label="Preprocessor", choices=list(KINDS), value="canny",
                                                   elem_id="control_kind")
                        control_scale = gr.Slider(0, MAX_SCALE, value=1.0, step=0.05, label="Control weight",
                                                  elem_id="control_scale")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                status = gr.Textbox(label="Progress", interactive=False, elem_id="status")
                gallery = gr.Gallery(label="Images", elem_id="gallery", columns=4)
                metadata = gr.Code(label="Metadata", language="json", elem_id="metadata")
                reuse_button = gr.Button("Reuse settings", elem_id="reuse")
        inputs = [prompt, negative, model, sampler, steps, guidance, seed, width, height, n, loras, lora_weight,
                  control_image, control_kind, control_scale]
        button.click(generate, inputs, [gallery, status, metadata], api_name="generate")
        gallery.select(selected, gallery, metadata)
        reuse_button.click(reuse, metadata, inputs, api_name="reuse")
        blocks.load(lambda: (gr.update(choices=model_choices(), value=server().a1111_options["sd_model_checkpoint"]),
                             gr.update(choices=lora_choices())), None, [model, loras])
    return blocks


def mount_ui(app: FastAPI) -> FastAPI:
    import gradio as gr

    return gr.mount_gradio_app(app, build_ui(app), path=UI_PATH)
