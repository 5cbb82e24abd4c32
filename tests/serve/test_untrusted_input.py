"""Issue 19 through the server: huge input images, model names that are paths, server paths in answers, the
requests that got a 500, and A1111 fields difflab cannot honour. Each answer is a 4xx naming the field."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.engine.huge_png import huge_png
from tests.serve.conftest import MODEL, SMALL

# what webuiapi 0.9.17 (the common A1111 Python client) sends for
# WebUIApi().txt2img(prompt="a red circle", seed=3, steps=2, width=32, height=32): every field, at its defaults
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "a red circle", "styles": [], "seed": 3, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0,
    "width": 32, "height": 32, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {},
}
# ... and for img2img(images=[init], denoising_strength=0.5, ...): txt2img's common fields plus its own
WEBUIAPI_IMG2IMG_OWN = {
    "resize_mode": 0, "denoising_strength": 0.5, "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": True,
    "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0, "initial_noise_multiplier": 1,
    "image_cfg_scale": 1.5, "include_init_images": False,
}
HR_ONLY = ("enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
           "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
           "firstphase_width", "firstphase_height", "denoising_strength")


def b64_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def small_png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG")
    return buffer.getvalue()


def refused(response, field: str) -> dict:
    assert response.status_code == 422, (field, response.status_code, response.text)
    error = response.json()["error"]
    assert error["fields"][0]["field"] == field, response.text
    assert "Traceback" not in response.text
    return error


# ---- 3. input images are bounded ----

@pytest.mark.parametrize("side", [11000, 20000, 4104])
def test_huge_uploads_are_refused_naming_the_field_and_nothing_is_stored(client, side: int) -> None:
    big = huge_png(side, side)  # 15 kB, 48 kB, 2 kB on disk
    error = refused(client.post("/v1/inputs", content=big, headers={"content-type": "image/png"}), "body")
    assert "at most 4096" in error["message"]
    refused(client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64_png(big)]}), "init_images.0")
    refused(client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64_png(small_png())],
                                                   "mask": b64_png(big)}), "mask")
    inputs = client.app.state.server.catalog.inputs_dir
    stored = list(inputs.iterdir()) if inputs.is_dir() else []
    assert all(Image.open(path).size == (32, 32) for path in stored)  # only the small init image, if any


# ---- 4. models are presets or names in --models-dir; no answer shows a server path ----

@pytest.fixture
def secret_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's working folder holds secret/tinycopy, a working copy of the bundled model outside --models-dir."""
    from difflab.engine.registry import BUNDLED_DIR

    cwd = tmp_path / "cwd"
    (cwd / "secret").mkdir(parents=True)
    (cwd / "secret" / "tinycopy").symlink_to(BUNDLED_DIR / "tiny-shapes", target_is_directory=True)
    monkeypatch.chdir(cwd)
    return cwd


def test_a_model_is_a_preset_or_a_name_in_the_models_dir_nothing_else(client, secret_cwd: Path,
                                                                       tiny_sd_folder: Path) -> None:
    names = ["secret/tinycopy", "secret/absent", "./secret/tinycopy", "secret/../secret/tinycopy", "../cwd/secret",
             str(secret_cwd / "secret" / "tinycopy"), str(tiny_sd_folder), "tiny-shapes/../tiny-shapes"]
    answers = []
    for name in names:
        answers.append(refused(client.post("/v1/generate", json={"prompt": "x", **SMALL, "model": name}), "model"))
        refused(client.post("/v1/generate", json={"prompt": "x", **SMALL, "refiner": name}), "refiner")
        refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 32, "height": 32, "steps": 1,
                                                       "override_settings": {"sd_model_checkpoint": name}}),
                "override_settings.sd_model_checkpoint")
        refused(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}), "sd_model_checkpoint")
    # the answer does not tell whether a folder of that name exists on the server
    assert answers[0]["message"].replace("secret/tinycopy", "N") == answers[1]["message"].replace("secret/absent", "N")
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == MODEL
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_no_answer_contains_a_server_path(client, secret_cwd: Path, models_dir: Path, tiny_sd_folder: Path) -> None:
    uploaded = client.post("/v1/inputs", content=small_png(), headers={"content-type": "image/png"}).json()["name"]
    job = client.post("/v1/generate", json={"prompt": "a red circle", **SMALL, "init_image": uploaded, "strength": 0.5})
    assert job.status_code == 200, job.text
    answers = [job, client.get(f"/v1/jobs/{job.json()['id']}"), client.get("/v1/jobs"), client.get("/v1/models"),
               client.get("/sdapi/v1/sd-models"), client.get("/v1/loras"),
               client.post("/v1/generate", json={"prompt": "x", **SMALL, "loras": ["nope:0.5"]}),
               client.post("/v1/generate", json={"prompt": "x", **SMALL, "model": "secret/tinycopy"}),
               client.post("/v1/generate", json={"prompt": "x", "model": "tiny-shapes", "init_image": uploaded,
                                                 "mask": uploaded, "width": 33})]
    assert job.json()["request"]["model"] == MODEL and job.json()["request"]["init_image"] == uploaded
    for folder in {tiny_sd_folder, models_dir, secret_cwd, client.app.state.server.config.data_dir}:
        for answer in answers:
            assert str(folder) not in answer.text and str(folder.resolve()) not in answer.text, answer.text
    sd_model = next(m for m in client.get("/sdapi/v1/sd-models").json() if m["model_name"] == MODEL)
    assert sd_model["filename"] == MODEL


# ---- 5. no request gets a 500 ----

def test_the_requests_that_got_a_500(client) -> None:
    body = {"prompt": "x", "width": 32, "height": 32, "steps": 1}
    refused(client.post("/sdapi/v1/txt2img", json={**body, "batch_size": 8589934592}), "batch_size")
    refused(client.post("/sdapi/v1/txt2img", json={**body, "batch_size": 16, "n_iter": 16}), "batch_size")
    refused(client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": 5}}),
            "override_settings.sd_model_checkpoint")
    refused(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}), "sd_model_checkpoint")
    for path in ("/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options"):
        error = refused(client.post(path, content=b'{"prompt": "x",', headers={"content-type": "application/json"}),
                        "body")
        assert error["message"].startswith("body: is not valid JSON"), error
        not_utf8 = client.post(path, content=b'\xff\xfe{"prompt": 1}', headers={"content-type": "application/json"})
        assert refused(not_utf8, "body")["message"].startswith("body: is not valid JSON")


# ---- 6. A1111 fields difflab cannot honour are refused, not ignored ----

def test_a1111_settings_difflab_cannot_honour_are_refused_naming_them(client) -> None:
    body = {"prompt": "x", "width": 32, "height": 32, "steps": 1, "seed": 1}
    cases = {"override_settings.CLIP_stop_at_last_layers": {"override_settings": {"CLIP_stop_at_last_layers": 13}},
             "override_settings.sd_vae": {"override_settings": {"sd_vae": "other.vae.pt"}},
             "override_settings.samples_format": {"override_settings": {"samples_format": "jpg"}},
             "not_an_a1111_field": {"not_an_a1111_field": 1},
             "styles": {"styles": ["my style"]}, "s_churn": {"s_churn": 0.5}, "infotext": {"infotext": "x\nSteps: 9"},
             "eta": {"eta": 0.3, "sampler_name": "Euler a"}, "subseed_strength": {"subseed_strength": 0.2}}
    for field, change in cases.items():
        refused(client.post("/sdapi/v1/txt2img", json={**body, **change}), field)
    refused(client.post("/sdapi/v1/img2img", json={**body, "init_images": [b64_png(small_png())], "latent_mask": "x",
                                                   "not_an_a1111_field": 1}), "latent_mask")
    # at the value that changes nothing they are accepted
    accepted = {**body, "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
                "eta": 0, "sampler_name": "DDIM", "do_not_save_samples": True, "subseed": 12345}
    assert client.post("/sdapi/v1/txt2img", json=accepted).status_code == 200


def test_what_webuiapi_sends_is_accepted_and_honoured(client) -> None:
    from tests.serve.test_a1111 import decode

    response = client.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["seed"], info["steps"], info["width"], info["cfg_scale"], info["sampler_name"]) == (3, 2, 32, 7.0,
                                                                                                    "Euler a")
    init = response.json()["images"][0]
    img2img = {key: value for key, value in WEBUIAPI_TXT2IMG.items() if key not in HR_ONLY}
    img2img.update(WEBUIAPI_IMG2IMG_OWN, init_images=["data:image/png;base64," + init])
    response = client.post("/sdapi/v1/img2img", json=img2img)
    assert response.status_code == 200, response.text
    assert decode(response.json()["images"][0]).size == (32, 32)
    # the same with eta difflab cannot honour for this sampler: refused, naming it
    refused(client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "sampler_name": "DDIM"}), "eta")


def test_list_fields_of_the_wrong_type_are_422_not_500(client) -> None:
    """Found by the API fuzzer (tests/serve/test_api_fuzz.py): ``memory: true`` raised a TypeError in a
    validator that runs before pydantic's type check."""
    for field, value in (("memory", True), ("loras", 5), ("controls", 1.5), ("memory", {"a": 1})):
        refused(client.post("/v1/generate", json={"prompt": "x", **SMALL, field: value}), field)


def test_every_ref_in_the_openapi_schema_resolves(client) -> None:
    """/v1/generate's body schema pointed at #/components/schemas/ControlSpec, which the document does not have:
    schema-driven clients (and the fuzzer) could build no body for it."""
    document = client.get("/openapi.json").json()

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert found, "the document has refs"
    for ref in found:
        target = document
        for part in ref.removeprefix("#/").split("/"):
            assert part in target, f"{ref} dangles"
            target = target[part]


@pytest.mark.parametrize("field,value,where", [
    ("vae", "secret/tinycopy/vae", "vae"),
    ("vae", "/etc/passwd", "vae"),
    ("hires_upscaler", "./x.safetensors", "hires_upscaler"),
    ("embeddings", ["ok-name", "secret/tok.safetensors:tok"], "embeddings.1"),
])
def test_vae_upscaler_and_embeddings_are_names_only_through_the_server(client, secret_cwd, field, value,
                                                                       where) -> None:
    """The engine takes these as paths on the command line; through the server a path would reach the server's
    working directory, so only names (looked up in the engine's own folders) are accepted."""
    body = {"prompt": "a red circle", "steps": 2, field: value}
    if field == "hires_upscaler":
        body["hires_scale"] = 2
    refused(client.post("/v1/generate", json=body), where)
