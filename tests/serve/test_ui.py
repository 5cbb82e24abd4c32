"""The Gradio web UI at /ui on a real server: through Gradio's Python client (every flow the UI offers), and in
headless Chromium (Debian's chromium + chromedriver, driven by Selenium) where those are installed
(tests/serve/ui_browser.py: the flows a user clicks through, with screenshots kept as test artefacts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.serve.live_server import LiveServer

gradio_client = pytest.importorskip("gradio_client", reason="the web UI needs gradio (pip install 'difflab[ui]')")
pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'difflab[ui]')")

NO_CONTROL = (None, "canny", 1.0)
NO_HIRES = (False, 2.0, 0.5, 0)
A1111_PARAMETERS = ("a castle on a hill <lora:style_a:0.7>\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M, "
                    "Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 32x40, Model hash: 0123456789, "
                    "Model: sd15, Version: v1.10.1")


@pytest.fixture(scope="module")
def ui_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from tests.engine.test_lora import _random_lora

    loras = tmp_path_factory.mktemp("ui-loras")
    lora = _random_lora(models_dir / "tiny", tmp_path_factory.mktemp("lora-work"), seed=1)
    shutil.copy(lora, loras / "style_a.safetensors")
    with LiveServer(tmp_path_factory.mktemp("ui") / "data", models_dir, "--loras-dir", str(loras), ui=True) as server:
        yield server


@pytest.fixture(scope="module")
def client(ui_server):
    return gradio_client.Client(f"{ui_server.url}/ui/", verbose=False)


def txt2img(*, prompt="a red circle", negative="", model="tiny", sampler="model default", steps=2, guidance=5.0,
            seed=0, width=32, height=32, n=1, loras=(), lora_weight=1.0, control=NO_CONTROL, hires=NO_HIRES):
    return (prompt, negative, model, sampler, steps, guidance, seed, width, height, n, list(loras), lora_weight,
            *control, *hires)


def error_of(client, *inputs, api_name="/generate") -> str:
    try:
        client.predict(*inputs, api_name=api_name)
    except Exception as error:  # gradio_client raises AppError carrying the gr.Error message
        return str(error)
    raise AssertionError(f"no error for {inputs}")


def test_ui_generates_shows_metadata_and_reuses_settings(client, tmp_path: Path) -> None:
    gallery, status, metadata = client.predict(*txt2img(negative="blue", sampler="Euler a", steps=3, seed=42, n=2,
                                                        loras=["style_a"], lora_weight=0.5), api_name="/generate")
    assert "done, 2 image(s), seed 42, 43" in status and len(gallery) == 2
    record = json.loads(metadata)
    assert record["seed"] == 42 and record["request"]["seed"] == 42 and record["parameters"].startswith(
        "a red circle <lora:style_a:0.5>\nNegative prompt: blue")
    assert [spec.rsplit("/", 1)[-1] for spec in record["request"]["loras"]] == ["style_a.safetensors:0.5"]
    reused = client.predict(metadata, api_name="/reuse")
    assert reused[0] == "a red circle" and reused[2] == "tiny" and reused[3] == "Euler a" and reused[6] == 42
    assert reused[10] == ["style_a:0.5"]

    assert "width" in error_of(client, *txt2img(width=30))
    assert "loras" in error_of(client, *txt2img(loras=["missing"]))
    # an uploaded control image becomes the request's control: the tiny random model has no canny ControlNet,
    # and the engine's refusal names the control
    edges = tmp_path / "edges.png"
    Image.new("RGB", (32, 32)).save(edges)
    message = error_of(client, *txt2img(control=(gradio_client.handle_file(str(edges)), "canny", 0.8)))
    assert "controls" in message and "canny" in message


def test_seed_minus_one_draws_a_seed_that_reuse_seed_puts_back(client) -> None:
    seeds = []
    for _ in range(2):
        _, status, metadata = client.predict(*txt2img(seed=-1), api_name="/generate")
        seed = json.loads(metadata)["seed"]
        assert f"seed {seed}" in status and seed != -1
        seeds.append(seed)
    assert seeds[0] != seeds[1]  # two draws from 2**32 seeds
    assert client.predict(metadata, api_name="/reuse_seed_generate") == seeds[1]
    # the drawn seed reproduces the image: same pixels from the seed written back
    _, _, again = client.predict(*txt2img(seed=seeds[1]), api_name="/generate")
    assert json.loads(again)["parameters"] == json.loads(metadata)["parameters"]


def test_hires_fix_doubles_the_size(client) -> None:
    gallery, status, metadata = client.predict(*txt2img(hires=(True, 2.0, 0.5, 2)), api_name="/generate")
    assert "done" in status
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (64, 64)
    record = json.loads(metadata)
    assert record["request"]["hires_scale"] == 2.0 and "Hires upscale: 2" in record["parameters"]


def test_img2img_and_inpainting_with_a_painted_mask(client, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(init)
    # what the brush leaves: a transparent layer with the painted strokes opaque
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (8, 8, 24, 24))
    layer_path = tmp_path / "layer.png"
    layer.save(layer_path)

    def editor(layers):
        return {"background": gradio_client.handle_file(str(init)), "composite": gradio_client.handle_file(str(init)),
                "layers": [gradio_client.handle_file(str(path)) for path in layers]}

    common = ("a red square", "", "tiny", "model default", 2, 5.0, 7, 1, [], 1.0)
    _, status, metadata = client.predict(*common, editor([]), 0.6, api_name="/generate_img2img")
    request = json.loads(metadata)["request"]
    assert "done" in status and request["strength"] == 0.6 and request["init_image"] and request["mask"] is None
    _, status, metadata = client.predict(*common, editor([layer_path]), 0.6, api_name="/generate_img2img")
    request = json.loads(metadata)["request"]
    assert "done" in status and request["mask"] is not None
    with Image.open(request["mask"]) as mask:  # the painted square, white; the rest black
        assert mask.getpixel((16, 16)) == 255 and mask.getpixel((2, 2)) == 0
    assert "init_image" in error_of(client, *common, {"background": None, "layers": [], "composite": None}, 0.6,
                                    api_name="/generate_img2img")


def test_png_info_reads_an_a1111_png_and_sends_it_to_txt2img(client, tmp_path: Path) -> None:
    path = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_PARAMETERS)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    parameters, fields = client.predict(gradio_client.handle_file(str(path)), api_name="/png_info")
    assert parameters == A1111_PARAMETERS
    assert json.loads(fields)["sampler"] == "DPM++ 2M Karras"
    filled = client.predict(parameters, api_name="/send_to_txt2img")
    assert filled[:2] == ("a castle on a hill", "fog")
    assert filled[3] == "DPM++ 2M Karras" and filled[4] == 3 and filled[5] == 6.5 and filled[6] == 1234
    assert (filled[7], filled[8]) == (32, 40) and filled[10] == ["style_a:0.7"]


def test_history_lists_finished_jobs_and_survives_a_restart(client, ui_server) -> None:
    _, _, metadata = client.predict(*txt2img(prompt="history check", seed=5), api_name="/generate")
    gallery = client.predict(api_name="/history")
    assert any("history check" in (item.get("caption") or "") for item in gallery)
    before = len(gallery)
    ui_server.stop()
    ui_server.start()
    again = gradio_client.Client(f"{ui_server.url}/ui/", verbose=False).predict(api_name="/history")
    assert len(again) == before and "history check" in again[0]["caption"]
