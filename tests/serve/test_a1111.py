"""The AUTOMATIC1111-compatible endpoints: A1111's field names in, A1111's response shape out, same pixels as /v1."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from difflab.engine.metadata import parse_parameters
from tests.serve.conftest import MODEL

# the keys of A1111's Processed.js() (modules/processing.py), which clients parse from "info"
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning",
    "version",
}
A1111_BODY = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 3, "cfg_scale": 5.0, "seed": 11,
              "sampler_name": "Euler a", "width": 32, "height": 32, "batch_size": 2, "n_iter": 1,
              # fields a stock A1111 client sends that change nothing here: accepted and ignored
              "restore_faces": False, "tiling": False, "styles": [], "enable_hr": False, "denoising_strength": 0}


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_txt2img_has_a1111_shape_and_the_same_image_as_v1(client) -> None:
    response = client.post("/sdapi/v1/txt2img", json=A1111_BODY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 2
    assert body["parameters"]["cfg_scale"] == 5.0 and body["parameters"]["seed"] == 11
    info = json.loads(body["info"])
    assert A1111_INFO_KEYS <= set(info)
    assert info["all_seeds"] == [11, 12] and info["sampler_name"] == "Euler a" and info["cfg_scale"] == 5.0
    assert (info["width"], info["height"], info["steps"], info["batch_size"]) == (32, 32, 3, 2)
    assert len(info["sd_model_hash"]) == 10 and info["infotexts"][1].startswith("a red circle\nNegative prompt: blue")
    second = decode(body["images"][1])
    assert second.text["parameters"] == info["infotexts"][1]  # the base64 PNG keeps its metadata
    assert parse_parameters(second.text["parameters"])[2]["Seed"] == "12"

    v1 = client.post("/v1/generate", json={"prompt": "a red circle", "negative_prompt": "blue", "steps": 3,
                                           "guidance": 5.0, "seed": 11, "scheduler": "Euler a", "width": 32,
                                           "height": 32, "n": 2, "model": MODEL}).json()
    v1_image = Image.open(io.BytesIO(client.get(v1["images"][1]["url"]).content))
    assert np.array_equal(np.asarray(v1_image), np.asarray(second))
    assert v1_image.text["parameters"] == second.text["parameters"]


def test_seed_minus_one_draws_a_seed_and_records_it(client) -> None:
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "a star", "steps": 1, "width": 32, "height": 32,
                                                  "seed": -1, "n_iter": 2}).json()
    info = json.loads(body["info"])
    assert body["parameters"]["seed"] == -1 and 0 <= info["seed"] < 2**32
    assert info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert parse_parameters(decode(body["images"][0]).text["parameters"])[2]["Seed"] == str(info["seed"])


def test_a1111_errors_name_the_a1111_field(client) -> None:
    cases = [({"cfg_scale": -1}, "cfg_scale"), ({"sampler_name": "warp"}, "sampler_name"),
             ({"restore_faces": True}, "restore_faces"), ({"steps": "many"}, "steps"),
             ({"override_settings": {"sd_model_checkpoint": "/etc"}}, "override_settings.sd_model_checkpoint"),
             ({"scheduler": "Exponential"}, "scheduler")]
    for change, field in cases:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 32, "height": 32, **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["error"]["fields"][0]["field"] == field, response.text


def test_models_samplers_options_and_progress(client) -> None:
    models = client.get("/sdapi/v1/sd-models").json()
    tiny = next(m for m in models if m["model_name"] == MODEL)
    assert tiny["title"] == f"{MODEL} [{tiny['hash']}]" and len(tiny["hash"]) == 10
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} <= set(samplers[0]) and "DPM++ 2M Karras" in {s["name"] for s in samplers}
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == MODEL
    # A1111 clients select a checkpoint by its title, "name [hash]"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": tiny["title"]}).status_code == 200
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 422
    progress = client.get("/sdapi/v1/progress").json()
    assert {"progress", "eta_relative", "state", "current_image", "textinfo"} <= set(progress)
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
