"""The rest of A1111's /sdapi/v1 (serve/a1111_extras.py), called as webuiapi calls them: GET with no query, POST
refresh/skip with no body, png-info with a ``data:image/png;base64,`` image (webuiapi's b64_img)."""

from __future__ import annotations

import base64
import io
import time

from PIL import Image, PngImagePlugin

from tests.serve.conftest import MODEL

A1111_PARAMETERS = ("a castle on a hill\nNegative prompt: fog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
                    "CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
                    "Version: v1.10.1")


def b64_img(image: Image.Image, pnginfo=None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_loras_lists_the_lora_folder_with_metadata(make_client, tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "loras"
    folder.mkdir()
    save_file({"w": torch.zeros(1)}, str(folder / "style_a.safetensors"), metadata={"ss_network_dim": "4"})
    client = make_client(loras_dir=folder)
    assert client.get("/sdapi/v1/loras").json() == [{"name": "style_a", "alias": "style_a",
                                                     "path": str(folder / "style_a.safetensors"),
                                                     "metadata": {"ss_network_dim": "4"}}]
    save_file({"w": torch.zeros(1)}, str(folder / "style_b.safetensors"))
    response = client.post("/sdapi/v1/refresh-loras")
    assert response.status_code == 200 and response.json() is None
    assert [item["name"] for item in client.get("/sdapi/v1/loras").json()] == ["style_a", "style_b"]


def test_catalog_endpoints_have_a1111_shapes(client) -> None:
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [item["name"] for item in upscalers][:3] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[1]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert client.get("/sdapi/v1/sd-vae").json() == []
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [item["label"] for item in schedulers] == ["Automatic", "Karras"]
    assert set(schedulers[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    for path in ("/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras", "/sdapi/v1/skip"):
        response = client.post(path)
        assert response.status_code == 200 and response.json() is None, path
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"}
    assert memory["ram"]["total"] > memory["ram"]["used"] > 0 and memory["ram"]["free"] > 0
    assert memory["cuda"] == {"error": "unavailable"} or memory["cuda"]["system"]["total"] > 0


def test_png_info_reads_our_pngs_and_a1111s(client) -> None:
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "negative_prompt": "blue", "steps": 2,
                                                  "seed": 11, "width": 32, "height": 40}).json()
    answer = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + made["images"][0]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"info", "items", "parameters"}
    assert body["info"].startswith("a red circle\nNegative prompt: blue")
    parameters = body["parameters"]
    assert parameters["Prompt"] == "a red circle" and parameters["Negative prompt"] == "blue"
    assert (parameters["Seed"], parameters["Steps"], parameters["Size-1"], parameters["Size-2"]) == ("11", "2", "32", "40")
    assert "difflab" in " ".join(body["items"])  # our JSON record, the other text chunk

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_PARAMETERS)
    body = client.post("/sdapi/v1/png-info", json={"image": b64_img(Image.new("RGB", (8, 8)), info)}).json()
    assert body["info"] == A1111_PARAMETERS and body["items"] == {}
    assert body["parameters"]["Sampler"] == "DPM++ 2M" and body["parameters"]["Schedule type"] == "Karras"
    assert (body["parameters"]["Size-1"], body["parameters"]["Size-2"]) == ("512", "768")
    # a PNG without parameters: empty, as A1111 answers
    body = client.post("/sdapi/v1/png-info", json={"image": b64_img(Image.new("RGB", (8, 8)))}).json()
    assert body == {"info": "", "items": {}, "parameters": {}}


def test_png_info_refuses_bad_images_naming_the_field(client) -> None:
    for payload in ({"image": "not base64!"}, {"image": base64.b64encode(b"not an image").decode()}, {},
                    {"image": 5}):
        response = client.post("/sdapi/v1/png-info", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert "image" in response.json()["error"]["message"], response.text


def test_skip_ends_the_running_job_within_a_step(client) -> None:
    job = client.post("/v1/generate?async=true", json={"prompt": "a long job", "steps": 150, "width": 64,
                                                       "height": 64, "model": MODEL}).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post("/sdapi/v1/skip").status_code == 200
    while (state := client.get(f"/v1/jobs/{job['id']}").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state["state"] == "cancelled" and state["progress"]["step"] < 150
