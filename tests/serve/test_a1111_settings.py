"""A1111 settings difflab honours, per request (``override_settings``) and for the requests that follow
(``POST /sdapi/v1/options``, as webuiapi's set_options and util_set_model send them): ``sd_model_checkpoint``
switches the model, ``sd_vae`` the VAE (names from the server's VAE folder only), ``CLIP_stop_at_last_layers``
the clip skip. Each draws what /v1/generate draws with the same field; bad values are 422 naming the setting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import MODEL
from tests.serve.test_a1111 import decode
from tests.serve.test_untrusted_input import WEBUIAPI_TXT2IMG, refused

DEEP = "deep"  # a second model: the tiny pipeline with a three-layer text encoder (something for clip skip to skip)


@pytest.fixture(scope="module")
def two_models(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import diffusers
    import torch

    from tests.engine.family_fixtures import clip_text_encoder

    folder = tmp_path_factory.mktemp("two-models")
    (folder / MODEL).symlink_to(tiny_sd_folder, target_is_directory=True)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
    torch.manual_seed(3)
    pipe.text_encoder = clip_text_encoder(pipe.tokenizer, layers=3)
    pipe.save_pretrained(folder / DEEP, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's VAE folder with one VAE, ``alt``: the tiny model's VAE with its weights moved by noise."""
    import diffusers
    import torch

    folder = tmp_path_factory.mktemp("vae")
    vae = diffusers.AutoencoderKL.from_pretrained(str(tiny_sd_folder / "vae"), local_files_only=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    vae.save_pretrained(folder / "alt", safe_serialization=True)
    return folder


@pytest.fixture
def client(make_client, two_models: Path, vae_dir: Path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_VAE_DIR", str(vae_dir))
    return make_client(models_dir=two_models)


BODY = {**WEBUIAPI_TXT2IMG, "prompt": "a red circle", "seed": 3}


def txt2img(client, **changes) -> tuple[np.ndarray, dict]:
    response = client.post("/sdapi/v1/txt2img", json={**BODY, **changes})
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    return np.asarray(image), json.loads(response.json()["info"])


def v1(client, **fields) -> np.ndarray:
    body = {"prompt": "a red circle", "steps": 2, "guidance": 7.0, "seed": 3, "scheduler": "Euler a", "width": 32,
            "height": 32, "model": MODEL, **fields}
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(client.get(answer.json()["images"][0]["url"]).content)))


def test_options_post_switches_the_model_for_the_next_txt2img(client) -> None:
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == MODEL
    _, before = txt2img(client)
    deep = next(model for model in client.get("/sdapi/v1/sd-models").json() if model["model_name"] == DEEP)
    # webuiapi's util_set_model: set_options({"sd_model_checkpoint": <a title from sd-models>})
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": deep["title"]})
    assert response.status_code == 200 and response.json() is None
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == DEEP
    pixels, after = txt2img(client)
    assert after["sd_model_name"] == DEEP != before["sd_model_name"]
    assert np.array_equal(pixels, v1(client, model=DEEP))
    # override_settings still wins for its own request, and does not stick
    _, once = txt2img(client, override_settings={"sd_model_checkpoint": MODEL})
    assert once["sd_model_name"] == before["sd_model_name"]
    assert txt2img(client)[1]["sd_model_name"] == DEEP
    # all or nothing: a bad option with a good one changes neither
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": MODEL, "CLIP_stop_at_last_layers": 99})
    refused(response, "CLIP_stop_at_last_layers")
    refused(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope [0123456789]"}),
            "sd_model_checkpoint")
    refused(client.post("/sdapi/v1/options", json={"samples_format": "jpg"}), "samples_format")
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == DEEP


def test_sd_vae_swaps_the_vae_by_name(client) -> None:
    own, info = txt2img(client)
    assert info["sd_vae_name"] is None
    swapped, info = txt2img(client, override_settings={"sd_vae": "alt"})
    assert info["sd_vae_name"] == "alt" and info["sd_vae_hash"]
    assert "VAE: alt" in info["infotexts"][0] and not np.array_equal(own, swapped)
    assert np.array_equal(swapped, v1(client, vae="alt"))
    # for every later request, through /options; "Automatic" (the model's own) for one request
    assert client.post("/sdapi/v1/options", json={"sd_vae": "alt"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "alt"
    assert np.array_equal(txt2img(client)[0], swapped)
    assert np.array_equal(txt2img(client, override_settings={"sd_vae": "Automatic"})[0], own)
    for value in ("nope", "../alt", "/etc/passwd", 5):
        refused(client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {"sd_vae": value}}),
                "override_settings.sd_vae")
        refused(client.post("/sdapi/v1/options", json={"sd_vae": value}), "sd_vae")
    assert client.get("/sdapi/v1/sd-vae").json() == [{"model_name": "alt", "filename": "alt"}]


def test_clip_stop_at_last_layers_is_clip_skip(client) -> None:
    last, info = txt2img(client, override_settings={"sd_model_checkpoint": DEEP})
    assert info["clip_skip"] == 1 and "Clip skip" not in info["infotexts"][0]
    skipped, info = txt2img(client, override_settings={"sd_model_checkpoint": DEEP, "CLIP_stop_at_last_layers": 2})
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    assert not np.array_equal(last, skipped)
    assert np.array_equal(skipped, v1(client, model=DEEP, clip_skip=2))
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2,
                                                  "sd_model_checkpoint": DEEP}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    assert np.array_equal(txt2img(client)[0], skipped)
    for value in (0, 13, 2.5, "2", True):
        refused(client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {
            "CLIP_stop_at_last_layers": value}}), "override_settings.CLIP_stop_at_last_layers")


def test_webuiapi_set_options_and_util_set_model(client) -> None:
    webuiapi = pytest.importorskip("webuiapi", reason="the fuzz extra: pip install -e '.[fuzz]'")
    from tests.serve.test_a1111_hires import webuiapi_over

    api = webuiapi_over(client, webuiapi)
    api.util_set_model(DEEP)  # lower-cases the name and picks the closest title from /sd-models
    assert api.util_get_current_model() == DEEP
    api.set_options({"sd_vae": "alt", "CLIP_stop_at_last_layers": 2})
    result = api.txt2img(prompt="a red circle", seed=3, width=32, height=32)
    assert (result.info["sd_model_name"], result.info["sd_vae_name"], result.info["clip_skip"]) == (DEEP, "alt", 2)
