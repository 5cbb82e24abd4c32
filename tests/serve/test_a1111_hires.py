"""A1111's txt2img hires fix (serve/a1111_hires.py): webuiapi's ``txt2img(enable_hr=True, ...)`` JSON draws what
/v1/generate draws with the same hires fields, hr_resize_x/y override hr_scale, the second pass runs as many
denoising steps as A1111's, and what difflab cannot do (latent upscaling, a cropping resize, another model or
prompt for the second pass) is refused naming the A1111 field."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from difflab.engine.metadata import parse_parameters
from difflab.serve.a1111_hires import img2img_steps_running
from tests.serve.conftest import MODEL
from tests.serve.test_a1111 import decode
from tests.serve.test_untrusted_input import WEBUIAPI_TXT2IMG, refused

# webuiapi's WebUIApi(sampler="Euler a", steps=2).txt2img(prompt=..., seed=3, width=32, height=32, enable_hr=True,
# hr_upscaler=HiResUpscaler.Lanczos): its other hires fields at their defaults (hr_scale 2, denoising 0.7, ...)
HIRES = {**WEBUIAPI_TXT2IMG, "enable_hr": True, "hr_upscaler": "Lanczos"}


def record_of(b64: str) -> dict:
    """difflab's JSON record in a returned PNG (the request as the engine ran it)."""
    from difflab.engine.metadata import RECORD_KEY

    return json.loads(decode(b64).text[RECORD_KEY])


@pytest.mark.parametrize("wanted", [1, 2, 3, 7, 20, 28, 50])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.7, 0.75, 0.999, 1.0])
def test_the_second_pass_runs_as_many_steps_as_a1111s(wanted: int, strength: float) -> None:
    """A1111 (setup_img2img_steps with steps given) runs exactly hr_second_pass_steps or steps denoising steps;
    diffusers' img2img runs int(steps * strength) of its steps."""
    from difflab.engine.modes import denoising_steps

    count = img2img_steps_running(wanted, strength)
    assert denoising_steps(count, strength) == wanted
    assert count == wanted or denoising_steps(count - 1, strength) < wanted  # the smallest such count


def test_webuiapi_hires_fix_draws_what_v1_draws(client) -> None:
    response = client.post("/sdapi/v1/txt2img", json=HIRES)
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode(body["images"][0])
    assert image.size == (64, 64)  # 32 x hr_scale 2
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.7
    assert info["extra_generation_params"]["Hires upscale"] == "2"
    assert info["extra_generation_params"]["Hires upscaler"] == "Lanczos"
    request = record_of(body["images"][0])["request"]
    # steps 2 at strength 0.7: A1111 runs 2 denoising steps; diffusers runs int(3 * 0.7) = 2 of 3
    assert (request["hires_scale"], request["hires_strength"], request["hires_steps"]) == (2.0, 0.7, 3)

    v1 = client.post("/v1/generate", json={"prompt": "a red circle", "steps": 2, "guidance": 7.0, "seed": 3,
                                           "scheduler": "Euler a", "width": 32, "height": 32, "model": MODEL,
                                           "hires_scale": 2, "hires_strength": 0.7, "hires_steps": 3,
                                           "hires_upscaler": "Lanczos"}).json()
    v1_image = Image.open(io.BytesIO(client.get(v1["images"][0]["url"]).content))
    assert np.array_equal(np.asarray(v1_image), np.asarray(image))
    assert parse_parameters(image.text["parameters"])[2]["Hires upscale"] == "2"


def test_hr_resize_overrides_hr_scale_and_second_pass_steps_and_strength_apply(client) -> None:
    body = {**HIRES, "hr_scale": 3, "hr_resize_x": 48, "hr_resize_y": 0, "hr_second_pass_steps": 4,
            "denoising_strength": 0.5, "hr_upscaler": "Nearest", "width": 32, "height": 64}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert decode(response.json()["images"][0]).size == (48, 96)  # A1111: hr_resize_x * height // width
    request = record_of(response.json()["images"][0])["request"]
    assert (request["hires_scale"], request["hires_strength"], request["hires_steps"]) == (1.5, 0.5, 8)
    # hr_resize_y alone, and both with the image's own aspect ratio
    for resize, size in (({"hr_resize_x": 0, "hr_resize_y": 128}, (64, 128)),
                         ({"hr_resize_x": 64, "hr_resize_y": 128}, (64, 128))):
        response = client.post("/sdapi/v1/txt2img", json={**body, **resize, "hr_second_pass_steps": 1})
        assert response.status_code == 200, response.text
        assert decode(response.json()["images"][0]).size == size
    # denoising_strength omitted: A1111's txt2img default, 0.75
    without = {key: value for key, value in HIRES.items() if key != "denoising_strength"}
    response = client.post("/sdapi/v1/txt2img", json={**without, "hr_second_pass_steps": 1})
    assert record_of(response.json()["images"][0])["request"]["hires_strength"] == 0.75


@pytest.mark.parametrize("change,field", [
    ({"hr_upscaler": "Latent"}, "hr_upscaler"),  # webuiapi's default: latent upscaling
    ({"hr_upscaler": None}, "hr_upscaler"),  # omitted: A1111 upscales latents
    ({"hr_upscaler": "Latent (nearest-exact)"}, "hr_upscaler"),
    ({"hr_upscaler": "no-such-upscaler"}, "hr_upscaler"),
    ({"hr_upscaler": "../x.safetensors"}, "hr_upscaler"),
    ({"hr_scale": 1}, "hr_scale"),
    ({"hr_scale": 9}, "hr_scale"),
    ({"hr_scale": "2"}, "hr_scale"),
    ({"hr_resize_x": 64, "hr_resize_y": 48}, "hr_resize_y"),  # A1111 would crop
    ({"hr_resize_x": 60}, "hr_resize_x"),
    ({"hr_resize_y": -8}, "hr_resize_y"),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ({"hr_second_pass_steps": 5000}, "hr_second_pass_steps"),
    ({"denoising_strength": 0}, "denoising_strength"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
    ({"hr_sampler_name": "DDIM"}, "hr_sampler_name"),
    ({"hr_prompt": "something else"}, "hr_prompt"),
    ({"hr_negative_prompt": "blur"}, "hr_negative_prompt"),
    ({"firstphase_width": 16}, "firstphase_width"),
    ({"enable_hr": "yes"}, "enable_hr"),
])
def test_what_the_hires_fix_cannot_honour_is_refused_naming_the_field(client, change, field) -> None:
    refused(client.post("/sdapi/v1/txt2img", json={**HIRES, **change}), field)


def test_the_same_as_first_pass_values_are_accepted_and_hires_off_ignores_the_rest(client) -> None:
    same = {**HIRES, "hr_sampler_name": "Euler a", "hr_prompt": "a red circle", "hr_checkpoint_name": "",
            "hr_scheduler": "Use same scheduler", "hr_second_pass_steps": 1}
    assert client.post("/sdapi/v1/txt2img", json=same).status_code == 200
    off = {**WEBUIAPI_TXT2IMG, "hr_upscaler": "Latent", "hr_resize_x": 60, "hr_prompt": "x"}
    response = client.post("/sdapi/v1/txt2img", json=off)
    assert response.status_code == 200 and decode(response.json()["images"][0]).size == (32, 32)
    img2img = {**{k: v for k, v in WEBUIAPI_TXT2IMG.items() if k != "denoising_strength"}, "enable_hr": True,
               "init_images": [response.json()["images"][0]]}
    refused(client.post("/sdapi/v1/img2img", json=img2img), "enable_hr")


def test_webuiapi_itself_drives_the_hires_fix(client) -> None:
    webuiapi = pytest.importorskip("webuiapi", reason="the fuzz extra: pip install -e '.[fuzz]'")

    api = webuiapi_over(client, webuiapi)
    result = api.txt2img(prompt="a red circle", seed=5, width=32, height=32, enable_hr=True, hr_scale=1.5,
                         hr_upscaler=webuiapi.HiResUpscaler.Lanczos, hr_second_pass_steps=1)
    assert result.image.size == (48, 48) and result.info["all_seeds"] == [5]
    with pytest.raises(RuntimeError) as error:  # its default upscaler is Latent
        api.txt2img(prompt="a red circle", width=32, height=32, enable_hr=True)
    assert error.value.args[0] == 422 and "hr_upscaler" in error.value.args[1]


def webuiapi_over(client, webuiapi):
    """A webuiapi.WebUIApi whose HTTP session is the test's client (webuiapi calls session.get/post(url=...))."""
    api = webuiapi.WebUIApi(baseurl="http://127.0.0.1:9/sdapi/v1", sampler="Euler a", steps=2)  # port 9: refused
    api.baseurl, api.session = "http://testserver/sdapi/v1", client
    return api
