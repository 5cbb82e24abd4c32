"""A1111's /sdapi/v1/img2img: base64 init image and mask in, the engine's img2img/inpainting pixels out."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from tests.serve.test_a1111 import A1111_INFO_KEYS, decode


def shapes_image(size=(32, 32)) -> Image.Image:
    image = Image.new("RGB", size, "blue")
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill="red")
    return image


def left_half_mask(size=(32, 32)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=255)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def saved(image: Image.Image, path: Path) -> str:
    image.save(path)
    return str(path)


def engine_images(pipeline_cache, folder: Path, **fields) -> list[np.ndarray]:
    from difflab.engine.pipeline import run
    from difflab.engine.request import build_request

    result = run(build_request(model=str(folder), **fields), pipeline_cache)
    return [np.asarray(image.convert("RGB")) for image in result.images]


def test_img2img_is_the_engine_img2img_of_the_same_request(client, pipeline_cache, tiny_sd_folder, tmp_path) -> None:
    init = shapes_image()
    body = {"prompt": "a red circle", "negative_prompt": "green", "init_images": [b64(init)],
            "denoising_strength": 0.6, "steps": 5, "cfg_scale": 5.0, "seed": 21, "sampler_name": "Euler a",
            "batch_size": 2, "resize_mode": 0, "mask_blur": 4}  # mask_blur without a mask: ignored, as in A1111
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"images", "parameters", "info"} and len(answer["images"]) == 2
    assert "init_images" not in answer["parameters"] and answer["parameters"]["denoising_strength"] == 0.6
    info = json.loads(answer["info"])
    assert A1111_INFO_KEYS <= set(info)
    assert info["denoising_strength"] == 0.6 and info["all_seeds"] == [21, 22] and (info["width"], info["height"]) == (32, 32)
    assert "Denoising strength: 0.6" in info["infotexts"][0]
    images = [decode(item) for item in answer["images"]]
    record = json.loads(images[0].text["difflab"])
    assert record["mode"]["mode"] == "img2img" and record["mode"]["strength"] == 0.6
    stored = Path(record["mode"]["init_image"]["path"])
    assert stored.parent.name == "inputs" and stored.parent.parent.name == "data"  # the server's inputs folder

    reference = engine_images(pipeline_cache, tiny_sd_folder, prompt="a red circle", negative_prompt="green",
                              init_image=saved(init, tmp_path / "init.png"), strength=0.6, steps=5, guidance=5.0,
                              seed=21, scheduler="Euler a", n=2)
    for served, expected in zip(images, reference):
        assert np.array_equal(np.asarray(served.convert("RGB")), expected)


def test_inpainting_with_a_mask_and_an_inverted_mask(client, pipeline_cache, tiny_sd_folder, tmp_path) -> None:
    init, mask = shapes_image(), left_half_mask()
    init_path = saved(init, tmp_path / "init.png")
    common = {"prompt": "a star", "init_images": [b64(init)], "denoising_strength": 0.9, "steps": 4, "seed": 5,
              "inpainting_fill": 1, "inpaint_full_res": False, "mask_blur": 0}
    for invert, mask_file in ((0, mask), (1, ImageOps.invert(mask))):
        response = client.post("/sdapi/v1/img2img", json={**common, "inpainting_mask_invert": invert,
                                                          "mask": "data:image/png;base64," + b64(mask)})
        assert response.status_code == 200, response.text
        served = decode(response.json()["images"][0])
        assert json.loads(served.text["difflab"])["mode"]["mode"] == "inpaint"
        expected = engine_images(pipeline_cache, tiny_sd_folder, prompt="a star", init_image=init_path,
                                 mask=saved(mask_file, tmp_path / f"mask{invert}.png"), strength=0.9, steps=4, seed=5)
        pixels = np.asarray(served.convert("RGB"))
        assert np.array_equal(pixels, expected[0])
        kept = np.asarray(mask_file) < 128  # outside the (possibly inverted) mask the original pixels stay
        assert np.array_equal(pixels[kept], np.asarray(init)[kept])


def test_img2img_errors_are_422_naming_the_field(client) -> None:
    init = b64(shapes_image())
    cases = [
        ({"init_images": ["!!! not base64 !!!"]}, "init_images.0"),
        ({"init_images": [base64.b64encode(b"hello").decode()]}, "init_images.0"),
        ({"init_images": ["https://example.com/cat.png"]}, "init_images.0"),
        ({"init_images": []}, "init_images"),
        ({"init_images": [init, init]}, "init_images"),
        ({"init_images": [init], "mask": b64(left_half_mask((16, 16)))}, "mask"),
        ({"init_images": [init], "mask": "%%%"}, "mask"),
        ({"init_images": [init], "mask": b64(left_half_mask()), "mask_blur": 4}, "mask_blur"),
        ({"init_images": [init], "mask": b64(left_half_mask()), "inpaint_full_res": True}, "inpaint_full_res"),
        ({"init_images": [init], "denoising_strength": 0}, "denoising_strength"),
        ({"init_images": [init], "resize_mode": 2}, "resize_mode"),
        ({"init_images": [b64(shapes_image((30, 30)))]}, "init_images.0"),  # not a multiple of 8
        ({}, "init_images"),
    ]
    for change, field in cases:
        response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 1, **change})
        assert response.status_code == 422, (change, response.text)
        error = response.json()["error"]
        assert error["fields"][0]["field"] == field, (change, error)
    mismatch = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [init],
                                                      "mask": b64(left_half_mask((16, 16)))}).json()["error"]
    assert "16x16" in mismatch["message"] and "32x32" in mismatch["message"]
    assert client.get("/v1/jobs").json()["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
