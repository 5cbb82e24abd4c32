"""``POST /controlnet/detect`` (serve/a1111_controlnet.py): the preprocessed map of an image as A1111's ControlNet
extension answers it, with the JSON webuiapi's ``controlnet_detect`` sends; the maps are engine/control.py's."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from difflab.engine.control import canny, scribble
from tests.serve.test_a1111_extras import b64_img
from tests.serve.test_untrusted_input import refused


def square(size=(64, 48)) -> Image.Image:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle((16, 12, 40, 36), fill=(230, 40, 40))
    return image


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_detect_answers_the_engines_maps(client) -> None:
    image = square()
    # webuiapi's controlnet_detect(images=[image], module="canny", processor_res=512, threshold_a=64,
    # threshold_b=64) with processor_res -1 (as sent) and A1111's canny thresholds
    body = {"controlnet_module": "canny", "controlnet_images": [b64_img(image)], "controlnet_processor_res": -1,
            "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["info"] == "Success" and len(answer["images"]) == 1
    made = decoded(answer["images"][0])
    assert made.shape == (48, 64, 3) and np.array_equal(made, np.asarray(canny(image, 100, 200)))
    assert made.max() == 255 and made[24, 28].max() == 0  # the square's edges, not its inside
    # A1111's module names, the extension's newer field name, and processor_res scaling the short side
    response = client.post("/controlnet/detect", json={"controlnet_module": "scribble_xdog",
                                                        "controlnet_input_images": [b64_img(image)] * 2,
                                                        "controlnet_processor_res": 96})
    assert response.status_code == 200, response.text
    maps = [decoded(item) for item in response.json()["images"]]
    big = image.resize((128, 96), Image.LANCZOS)
    assert len(maps) == 2 and maps[0].shape == (96, 128, 3)
    assert np.array_equal(maps[0], np.asarray(scribble(big)))
    none = client.post("/controlnet/detect", json={"controlnet_module": "none", "controlnet_images": [b64_img(image)]})
    assert np.array_equal(decoded(none.json()["images"][0]), np.asarray(image))


@pytest.mark.parametrize("change,field", [
    ({"controlnet_module": "lineart_anime"}, "controlnet_module"),
    ({"controlnet_module": 3}, "controlnet_module"),
    ({"controlnet_images": []}, "controlnet_images"),
    ({"controlnet_images": ["not base64!"]}, "controlnet_images.0"),
    ({"controlnet_images": [base64.b64encode(b"no image").decode()]}, "controlnet_images.0"),
    ({"controlnet_processor_res": 10}, "controlnet_processor_res"),
    ({"controlnet_threshold_a": 300, "controlnet_threshold_b": 100}, "controlnet_threshold_a"),
    ({"controlnet_threshold_a": 1.5}, "controlnet_threshold_a"),
    ({"controlnet_guidance": 1}, "controlnet_guidance"),
])
def test_detect_refuses_bad_input_naming_the_field(client, change, field) -> None:
    body = {"controlnet_module": "canny", "controlnet_images": [b64_img(square())], **change}
    refused(client.post("/controlnet/detect", json=body), field)
