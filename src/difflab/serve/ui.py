"""The web UI (Gradio), mounted at ``/ui`` in the same app: forms over the same queue and worker as ``/v1``.

Tabs: txt2img (with hires fix, the SDXL refiner, LoRAs and two ControlNet units whose preprocessed maps "Preview
map" shows, as ``POST /controlnet/detect`` makes them), img2img (strength; a mask painted with the brush makes it
inpainting), PNG Info (any PNG, ours or A1111's; "send to" fills a form) and History (finished jobs from the
JobStore, so it survives a restart). Every job is a GenerationRequest validated by ``routes.validated_request``
and queued in the same JobStore as API jobs (serve/ui_jobs.py). While it runs, a progress bar and the server's
step previews (``--preview-every``, on by default with ``--ui``) show under the Generate button. Seed -1 draws a
seed; the drawn one is shown and "Reuse seed" puts an image's seed back. Interrupt cancels the job in the status
line at its next step. A line under the title names the server's backend (``backend: openvino f32``): one per
server process (serve --backend), so a user knows what draws. Gradio is optional: without it the API runs and
``/ui`` is absent.

No ``from __future__ import annotations`` here: Gradio reads a handler's parameter annotations to pass it the
event (``evt: gr.SelectData``), and with postponed annotations it would see only the string "gr.SelectData",
fail to resolve it (gradio is imported inside build_ui) and pass None: the "'NoneType' object is not
subscriptable" toast of issue 22.
"""

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from difflab.serve import ui_jobs

UI_PATH = "/ui"
# form fields in the order the handlers take them (and gradio_client's /generate_* endpoints list them)
CONTROL_UNITS = 2  # ControlNet units on the txt2img tab (a request takes up to engine.request.MAX_CONTROLS)
CONTROL_FIELDS = tuple(f"control{unit}_{name}" for unit in range(1, CONTROL_UNITS + 1)
                       for name in ("image", "kind", "scale"))
TXT2IMG_FIELDS = ("prompt", "negative", "model", "sampler", "steps", "guidance", "seed", "width", "height", "n",
                  "loras", "lora_weight", *CONTROL_FIELDS, "hires", "hires_scale", "hires_strength", "hires_steps",
                  "hires_upscaler", "refiner", "refiner_switch")
IMG2IMG_FIELDS = ("prompt", "negative", "model", "sampler", "steps", "guidance", "seed", "n", "loras",
                  "lora_weight", "editor", "strength")


def gradio_available() -> bool:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return False
    return True


def backend_label(config) -> str:
    """What draws this server's images, for the UI: ``backend: openvino f32``. The backend is chosen per server
    process (serve --backend, --precision, --compile), never per job, so the form has no field for it."""
    from difflab.engine.backends import Backend

    return f"backend: {Backend(config.backend, config.precision).describe()}" + (
        " (U-Net compiled with torch.compile)" if config.compile else "")


def build_ui(app: FastAPI):
    """The Gradio Blocks; handlers find the server state on ``app`` when they run (it exists only after startup)."""
    import gradio as gr
    from pydantic import ValidationError

    from difflab.engine.control import KINDS, MAX_SCALE
    from difflab.engine.lora import parse_lora_spec
    from difflab.engine.request import DEFAULT_HIRES_STRENGTH, DEFAULT_REFINER_SWITCH, DEFAULT_STRENGTH, \
        MAX_HIRES_SCALE, describe_validation_error
    from difflab.engine.upscalers.registry import upscaler_names
    from difflab.engine.schedulers import SAMPLER_NAMES
    from difflab.serve.catalog import FieldError
    from difflab.serve.inputs import store_image
    from difflab.serve.queue import QueueFull

    def server():
        return app.state.server

    def model_choices() -> list[str]:
        from difflab.serve.routes import model_entries

        return [entry["name"] for entry in model_entries(server()) if entry["available"]]

    def lora_with_weight(item: str, weight: float) -> str:
        """``NAME`` gets the slider's weight; ``NAME:WEIGHT`` keeps its own (engine.lora's NAME[:WEIGHT] syntax)."""
        item = item.strip()
        try:
            weighted = parse_lora_spec(item).source != item
        except ValueError:
            return item  # the request's validation names the field
        return item if weighted else f"{item}:{weight:g}"

    def stored(field: str, data: bytes, mode=None) -> str:
        """An image put in the server's inputs, as ``POST /v1/inputs`` would: the request names it."""
        return store_image(server().catalog.inputs_dir, field, data, mode).name

    def common_body(prompt, negative, model, sampler, steps, guidance, seed, n, loras, lora_weight) -> dict:
        body: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "model": model,
                                "scheduler": ui_jobs.sampler_field(sampler), "steps": int(steps),
                                "guidance": float(guidance), "n": int(n),
                                "seed": ui_jobs.draw_seed(int(seed if seed is not None else -1), int(n))}
        if loras:
            body["loras"] = [lora_with_weight(item, lora_weight) for item in loras]
        return body

    def follow(make_body):
        """Run a job from the body ``make_body()`` builds; yields (gallery, status, metadata, paths, progress bar,
        live preview): the preview while the job runs, cleared once its images are in the gallery."""
        try:
            body = make_body()
            updates = ui_jobs.run_job(server(), body)
            for update in updates:
                progress = ui_jobs.progress_html(update.step, update.steps)
                if update.paths is None:
                    preview = gr.update() if update.preview is None else gr.update(value=update.preview,
                                                                                   visible=True)
                    yield gr.update(), update.status, gr.update(), gr.update(), progress, preview
                elif not update.paths:  # interrupted
                    yield [], update.status, "", [], "", gr.update(value=None, visible=False)
                else:
                    gallery = [(path, f"seed {ui_jobs.describe(path)['seed']}") for path in update.paths]
                    yield (gallery, update.status, ui_jobs.dumps(ui_jobs.describe(update.paths[0])), update.paths,
                           progress, gr.update(value=None, visible=False))
        except FieldError as error:
            raise gr.Error(str(error))
        except ValidationError as error:
            raise gr.Error(describe_validation_error(error))
        except (QueueFull, ValueError) as error:
            raise gr.Error(str(error))

    def generate_txt2img(prompt, negative, model, sampler, steps, guidance, seed, width, height, n, loras,
                         lora_weight, *rest):
        units = [rest[index:index + 3] for index in range(0, 3 * CONTROL_UNITS, 3)]
        hires, hires_scale, hires_strength, hires_steps, hires_upscaler, refiner, refiner_switch = \
            rest[3 * CONTROL_UNITS:]

        def body():
            result = common_body(prompt, negative, model, sampler, steps, guidance, seed, n, loras, lora_weight)
            result.update(width=int(width), height=int(height))
            result.update(ui_jobs.hires_fields(hires, hires_scale, hires_strength, hires_steps, hires_upscaler))
            result.update(ui_jobs.refiner_fields(refiner, refiner_switch))
            controls = [{"kind": kind, "scale": float(scale),
                         "image": stored(f"control image {unit}", Path(image).read_bytes())}
                        for unit, (image, kind, scale) in enumerate(units, 1) if image]
            if controls:
                result["controls"] = controls
            return result

        yield from follow(body)

    def preview_map(image, kind, width, height):
        """What ``POST /controlnet/detect`` answers for this unit: the map its ControlNet sees at the output size."""
        from PIL import Image

        from difflab.serve.a1111_controlnet import control_map

        if not image:
            raise gr.Error("upload a control image first")
        try:
            with Image.open(image) as opened:
                return control_map(kind, opened, size=(int(width), int(height)))
        except (ValueError, OSError) as error:
            raise gr.Error(str(error))

    def generate_img2img(prompt, negative, model, sampler, steps, guidance, seed, n, loras, lora_weight, editor,
                         strength):
        def body():
            init, mask = ui_jobs.editor_images(editor)
            if init is None:
                raise FieldError("init_image", "upload an image to start from")
            result = common_body(prompt, negative, model, sampler, steps, guidance, seed, n, loras, lora_weight)
            result.update(init_image=stored("init_image", ui_jobs.png_bytes(init), "RGB"), strength=float(strength))
            if mask is not None:
                result["mask"] = stored("mask", ui_jobs.png_bytes(mask), "L")
            return result

        yield from follow(body)

    def selected(evt: gr.SelectData, paths):
        if evt is None or not paths or evt.index is None or evt.index >= len(paths):
            return gr.update()
        return ui_jobs.dumps(ui_jobs.describe(paths[evt.index]))

    def reuse_seed(metadata: str):
        seed = json.loads(metadata or "{}").get("seed")
        if seed is None:
            raise gr.Error("generate or pick an image first: its seed is what is reused")
        return seed

    def lora_names(specs: list[str]) -> list[str]:
        """A record's LoRAs are server paths with weights; the picker wants ``NAME:WEIGHT``."""
        names = []
        for text in specs:
            spec = parse_lora_spec(text)
            path = Path(spec.source)
            name = path.stem if path.suffix == ".safetensors" else path.name
            names.append(name if spec.source == text.strip() else f"{name}:{spec.weight:g}")
        return names

    def model_name(name: str) -> str:
        models = model_choices()
        return next((m for m in models if name == m or name.endswith("/" + m)
                     or server().catalog.model_path("model", m) == name), name)

    def reuse(metadata: str):
        """The picked image's request back in the txt2img form (its own seed, not the job's first)."""
        described = json.loads(metadata or "{}")
        request = described.get("request") or {}
        if not request:
            raise gr.Error("pick an image in the gallery first")
        controls = list(request.get("controls") or [])[:CONTROL_UNITS]
        controls += [{}] * (CONTROL_UNITS - len(controls))
        units = []
        for control in controls:  # the control images stay as they are: the record holds only server paths
            units += [gr.update(), control.get("kind", "canny"), control.get("scale", 1.0)]
        refiner = request.get("refiner")
        return (request["prompt"], request.get("negative_prompt", ""), model_name(request.get("model", "")),
                request.get("scheduler") or ui_jobs.MODEL_DEFAULT, request.get("steps") or 20,
                request.get("guidance") if request.get("guidance") is not None else 7.5,
                described.get("seed", request.get("seed", -1)), request.get("width") or 64,
                request.get("height") or 64, request.get("n", 1), lora_names(request.get("loras") or []), 1.0,
                *units, request.get("hires_scale") is not None,
                request.get("hires_scale") or 2.0, request.get("hires_strength") or DEFAULT_HIRES_STRENGTH,
                request.get("hires_steps") or 0, request.get("hires_upscaler") or "Lanczos",
                model_name(refiner) if refiner else ui_jobs.NO_REFINER,
                request.get("refiner_switch") or DEFAULT_REFINER_SWITCH)

    def png_info(file):
        """The parameters of a dropped PNG (read from the file as sent, before any re-encoding drops them)."""
        if not file:
            return "", "{}"
        try:
            parameters, record = ui_jobs.read_png(file)
        except ValueError as error:
            raise gr.Error(str(error))
        if not parameters:
            return "", json.dumps({"note": "this PNG has no parameters"})
        return parameters, json.dumps(ui_jobs.form_from_parameters(parameters), indent=1)

    def send_to(fields: tuple[str, ...], tab: str):
        def fill(parameters: str):
            if not parameters:
                raise gr.Error("drop a PNG with parameters first")
            values = ui_jobs.form_from_parameters(parameters)
            if "model" in values and values["model"] not in model_choices():
                del values["model"]  # a model this server does not have: keep the current one
            return (*(values[name] if name in values else gr.update() for name in fields),
                    gr.Tabs(selected=tab))

        return fill

    def show_history():
        items = ui_jobs.history(server())
        return items, [path for path, _ in items]

    def generation_form(tab: str) -> dict[str, Any]:
        """The fields both generation tabs share; elem_ids are ``<tab>_<field>`` for the browser tests."""
        c: dict[str, Any] = {}
        c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id=f"{tab}_prompt")
        c["negative"] = gr.Textbox(label="Negative prompt", elem_id=f"{tab}_negative")
        with gr.Row():
            c["model"] = gr.Dropdown(label="Model", choices=[], allow_custom_value=True, elem_id=f"{tab}_model")
            c["sampler"] = gr.Dropdown(label="Sampler", choices=[ui_jobs.MODEL_DEFAULT, *SAMPLER_NAMES],
                                       value=ui_jobs.MODEL_DEFAULT, elem_id=f"{tab}_sampler")
        with gr.Row():
            c["steps"] = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id=f"{tab}_steps")
            c["guidance"] = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance (CFG)", elem_id=f"{tab}_guidance")
        with gr.Row():
            c["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id=f"{tab}_seed", scale=3)
            dice = gr.Button("Random", elem_id=f"{tab}_random_seed", scale=0, min_width=100)  # A1111's dice: -1
            dice.click(lambda: -1, None, c["seed"])
            c["n"] = gr.Slider(1, 8, value=1, step=1, label="Images", elem_id=f"{tab}_n", scale=3)
        return c

    def lora_fields(c: dict[str, Any], tab: str) -> None:
        with gr.Row():
            c["loras"] = gr.Dropdown(label="LoRAs (NAME or NAME:WEIGHT)", choices=[], multiselect=True,
                                     allow_custom_value=True, elem_id=f"{tab}_loras")
            c["lora_weight"] = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight",
                                         elem_id=f"{tab}_lora_weight")

    def output_panel(tab: str) -> dict[str, Any]:
        o: dict[str, Any] = {}
        with gr.Row():
            o["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", scale=3)
            o["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id=f"{tab}_interrupt", scale=1)
        o["status"] = gr.Textbox(label="Progress", interactive=False, elem_id=f"{tab}_status")
        o["progress"] = gr.HTML("", elem_id=f"{tab}_progress")
        # the server's step previews while a job runs (hidden otherwise, so the gallery is what a result shows)
        o["preview"] = gr.Image(label="Live preview", elem_id=f"{tab}_preview", interactive=False, visible=False,
                                type="pil", format="png", height=256)
        # output only: interactive=False, or an empty gallery invites "Drop Media Here"
        o["gallery"] = gr.Gallery(label="Images", elem_id=f"{tab}_gallery", columns=4, interactive=False,
                                  format="png")
        o["paths"] = gr.State([])
        o["metadata"] = gr.Code(label="Metadata", language="json", elem_id=f"{tab}_metadata")
        with gr.Row():
            o["reuse_seed"] = gr.Button("♻️ Reuse seed", elem_id=f"{tab}_reuse_seed")
            o["reuse"] = gr.Button("Reuse settings", elem_id=f"{tab}_reuse")
        return o

    control_maps: dict[int, Any] = {}
    map_buttons: dict[int, Any] = {}
    with gr.Blocks(title="difflab") as blocks:
        gr.Markdown("## difflab\nJobs share the server's queue with the API (`/v1`, `/sdapi/v1`).")
        backend = gr.Markdown(elem_id="backend")  # what draws: one backend per server process (serve --backend)
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                with gr.Row():
                    with gr.Column():
                        t = generation_form("txt2img")
                        with gr.Row():
                            t["width"] = gr.Slider(8, 1024, value=64, step=8, label="Width", elem_id="txt2img_width")
                            t["height"] = gr.Slider(8, 1024, value=64, step=8, label="Height",
                                                    elem_id="txt2img_height")
                        lora_fields(t, "txt2img")
                        with gr.Accordion("Hires fix", open=False):
                            t["hires"] = gr.Checkbox(label="Hires fix", value=False, elem_id="txt2img_hires")
                            with gr.Row():
                                t["hires_scale"] = gr.Slider(1.25, MAX_HIRES_SCALE, value=2.0, step=0.25,
                                                             label="Upscale by", elem_id="txt2img_hires_scale")
                                t["hires_strength"] = gr.Slider(0.05, 1, value=DEFAULT_HIRES_STRENGTH, step=0.05,
                                                                label="Denoising strength",
                                                                elem_id="txt2img_hires_strength")
                                t["hires_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0: same)",
                                                             elem_id="txt2img_hires_steps")
                            t["hires_upscaler"] = gr.Dropdown(label="Upscaler", choices=upscaler_names(),
                                                              value="Lanczos", elem_id="txt2img_hires_upscaler")
                        with gr.Accordion("Refiner (SDXL)", open=False):
                            with gr.Row():
                                # choices arrive with the page (the server's models); the request checks the name
                                t["refiner"] = gr.Dropdown(label="Refiner model", choices=[ui_jobs.NO_REFINER],
                                                           value=ui_jobs.NO_REFINER, allow_custom_value=True,
                                                           elem_id="txt2img_refiner")
                                t["refiner_switch"] = gr.Slider(0.05, 0.95, value=DEFAULT_REFINER_SWITCH, step=0.05,
                                                                label="Switch at (fraction of the steps)",
                                                                elem_id="txt2img_refiner_switch")
                        for unit in range(1, CONTROL_UNITS + 1):
                            with gr.Accordion(f"ControlNet unit {unit}", open=False, elem_id=f"txt2img_control{unit}"):
                                with gr.Row():
                                    t[f"control{unit}_image"] = gr.Image(label="Control image", type="filepath",
                                                                         elem_id=f"txt2img_control{unit}_image")
                                    control_maps[unit] = gr.Image(label="Preprocessed map", interactive=False,
                                                                  elem_id=f"txt2img_control{unit}_map", format="png")
                                with gr.Row():
                                    t[f"control{unit}_kind"] = gr.Dropdown(
                                        label="Preprocessor", choices=list(KINDS), value="canny",
                                        elem_id=f"txt2img_control{unit}_kind")
                                    t[f"control{unit}_scale"] = gr.Slider(
                                        0, MAX_SCALE, value=1.0, step=0.05, label="Control weight",
                                        elem_id=f"txt2img_control{unit}_scale")
                                    map_buttons[unit] = gr.Button("Preview map",
                                                                  elem_id=f"txt2img_control{unit}_preview")
                    with gr.Column():
                        t_out = output_panel("txt2img")
            with gr.Tab("img2img", id="img2img"):
                with gr.Row():
                    with gr.Column():
                        i = generation_form("img2img")
                        lora_fields(i, "img2img")
                        i["editor"] = gr.ImageEditor(
                            label="Image (paint with the brush to inpaint the painted part)", type="pil",
                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), elem_id="img2img_editor")
                        i["strength"] = gr.Slider(0.05, 1, value=DEFAULT_STRENGTH, step=0.05,
                                                  label="Denoising strength", elem_id="img2img_strength")
                    with gr.Column():
                        i_out = output_panel("img2img")
            with gr.Tab("PNG Info", id="pnginfo"):
                with gr.Row():
                    with gr.Column():
                        png_file = gr.File(label="Drop a PNG", file_types=[".png"], type="filepath",
                                           elem_id="pnginfo_file")
                    with gr.Column():
                        png_parameters = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                                    elem_id="pnginfo_parameters")
                        png_fields = gr.Code(label="As form values", language="json", elem_id="pnginfo_fields")
                        with gr.Row():
                            to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_to_txt2img")
                            to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_to_img2img")
            with gr.Tab("History", id="history") as history_tab:
                refresh = gr.Button("Refresh", elem_id="history_refresh")
                history_gallery = gr.Gallery(label="Finished jobs, newest first", elem_id="history_gallery",
                                             columns=6, interactive=False, format="png")
                history_paths = gr.State([])
                history_metadata = gr.Code(label="Metadata", language="json", elem_id="history_metadata")

        t_inputs = [t[name] for name in TXT2IMG_FIELDS]
        i_inputs = [i[name] for name in IMG2IMG_FIELDS]
        for form, out, inputs, handler, name in ((t, t_out, t_inputs, generate_txt2img, "generate"),
                                                 (i, i_out, i_inputs, generate_img2img, "generate_img2img")):
            outputs = [out["gallery"], out["status"], out["metadata"], out["paths"], out["progress"], out["preview"]]
            out["generate"].click(handler, inputs, outputs, api_name=name)
            # not queued behind the generation it stops: Gradio's queue runs one event of a kind at a time
            out["interrupt"].click(lambda status: ui_jobs.interrupt(server(), status), out["status"], out["status"],
                                   api_name=f"interrupt_{name}", queue=False)
            out["gallery"].select(selected, out["paths"], out["metadata"])
            out["reuse_seed"].click(reuse_seed, out["metadata"], form["seed"], api_name=f"reuse_seed_{name}")
        t_out["reuse"].click(reuse, t_out["metadata"], t_inputs, api_name="reuse")
        for unit in range(1, CONTROL_UNITS + 1):
            map_buttons[unit].click(preview_map, [t[f"control{unit}_image"], t[f"control{unit}_kind"], t["width"],
                                                  t["height"]], control_maps[unit], api_name=f"control_map_{unit}")
        i_out["reuse"].click(reuse, i_out["metadata"], t_inputs).then(lambda: gr.Tabs(selected="txt2img"), None, tabs)
        png_file.change(png_info, png_file, [png_parameters, png_fields], api_name="png_info")
        to_txt2img.click(send_to(TXT2IMG_FIELDS, "txt2img"), png_parameters, [*t_inputs, tabs],
                         api_name="send_to_txt2img")
        to_img2img.click(send_to(IMG2IMG_FIELDS, "img2img"), png_parameters, [*i_inputs, tabs],
                         api_name="send_to_img2img")
        refresh.click(show_history, None, [history_gallery, history_paths], api_name="history")
        history_tab.select(show_history, None, [history_gallery, history_paths])
        history_gallery.select(selected, history_paths, history_metadata)

        def on_load():
            models = model_choices()
            current = server().a1111_options["sd_model_checkpoint"]
            loras = list(server().catalog.loras())
            return (gr.update(choices=models, value=current), gr.update(choices=loras),
                    gr.update(choices=models, value=current), gr.update(choices=loras),
                    gr.update(choices=[ui_jobs.NO_REFINER, *models]))

        blocks.load(on_load, None, [t["model"], t["loras"], i["model"], i["loras"], t["refiner"]])
        blocks.load(lambda: backend_label(server().config), None, backend, api_name="backend")
    return blocks


def mount_ui(app: FastAPI) -> FastAPI:
    import gradio as gr

    return gr.mount_gradio_app(app, build_ui(app), path=UI_PATH)
