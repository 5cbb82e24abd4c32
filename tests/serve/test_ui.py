"""The Gradio web UI at /ui on a real server: through Gradio's Python client (every flow the UI offers), and in
headless Chromium (Debian's chromium + chromedriver, driven by Selenium) where those are installed
(tests/serve/ui_browser.py: the flows a user clicks through, with screenshots kept as test artefacts)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.serve.live_server import LiveServer

gradio_client = pytest.importorskip("gradio_client", reason="the web UI needs gradio (pip install 'difflab[ui]')")
pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'difflab[ui]')")

NO_CONTROL = (None, "canny", 1.0)
NO_HIRES = (False, 2.0, 0.5, 0, "Lanczos")
NO_REFINER = ("None", 0.8)
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
            seed=0, width=32, height=32, n=1, loras=(), lora_weight=1.0, control=NO_CONTROL, control2=NO_CONTROL,
            hires=NO_HIRES, refiner=NO_REFINER):
    return (prompt, negative, model, sampler, steps, guidance, seed, width, height, n, list(loras), lora_weight,
            *control, *control2, *hires, *refiner)


def error_of(client, *inputs, api_name="/generate") -> str:
    try:
        client.predict(*inputs, api_name=api_name)
    except Exception as error:  # gradio_client raises AppError carrying the gr.Error message
        return str(error)
    raise AssertionError(f"no error for {inputs}")


def test_ui_generates_shows_metadata_and_reuses_settings(client, tmp_path: Path) -> None:
    gallery, status, metadata, *_ = client.predict(*txt2img(negative="blue", sampler="Euler a", steps=3, seed=42, n=2,
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
        _, status, metadata, *_ = client.predict(*txt2img(seed=-1), api_name="/generate")
        seed = json.loads(metadata)["seed"]
        assert f"seed {seed}" in status and seed != -1
        seeds.append(seed)
    assert seeds[0] != seeds[1]  # two draws from 2**32 seeds
    assert client.predict(metadata, api_name="/reuse_seed_generate") == seeds[1]
    # the drawn seed reproduces the image: same pixels from the seed written back
    _, _, again, *_ = client.predict(*txt2img(seed=seeds[1]), api_name="/generate")
    assert json.loads(again)["parameters"] == json.loads(metadata)["parameters"]


def test_hires_fix_doubles_the_size(client) -> None:
    gallery, status, metadata, *_ = client.predict(*txt2img(hires=(True, 2.0, 0.5, 2, "Nearest")),
                                                   api_name="/generate")
    assert "done" in status
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (64, 64)
    record = json.loads(metadata)
    assert record["request"]["hires_scale"] == 2.0 and "Hires upscale: 2" in record["parameters"]
    assert record["request"]["hires_upscaler"] == "Nearest" and "Hires upscaler: Nearest" in record["parameters"]


def test_refiner_and_the_second_control_unit_reach_the_request(client, tmp_path: Path) -> None:
    """The tiny model is no SDXL base and has no ControlNet: the engine's refusals name the fields the form set."""
    message = error_of(client, *txt2img(refiner=("tiny", 0.7)))
    assert "refiner" in message and "SDXL" in message
    edges = tmp_path / "edges.png"
    Image.new("RGB", (32, 32)).save(edges)
    message = error_of(client, *txt2img(control2=(gradio_client.handle_file(str(edges)), "scribble", 0.5)))
    assert "controls" in message and "scribble" in message
    # the map preview of a unit (the button's endpoint) at the form's size
    shown = client.predict(gradio_client.handle_file(str(edges)), "none", 64, 64, api_name="/control_map_1")
    with Image.open(shown) as made:
        assert made.size == (64, 64)
    assert "aspect ratio" in error_of(client, gradio_client.handle_file(str(edges)), "canny", 64, 32,
                                      api_name="/control_map_1")


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
    _, status, metadata, *_ = client.predict(*common, editor([]), 0.6, api_name="/generate_img2img")
    request = json.loads(metadata)["request"]
    assert "done" in status and request["strength"] == 0.6 and request["init_image"] and request["mask"] is None
    _, status, metadata, *_ = client.predict(*common, editor([layer_path]), 0.6, api_name="/generate_img2img")
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


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def artifacts_dir() -> Path:
    """Where the browser tests keep their screenshots: $DIFFLAB_TEST_ARTIFACTS, else tests/artifacts (ignored by
    git); README's screenshot is the txt2img one."""
    folder = Path(os.environ.get("DIFFLAB_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium and chromium-driver "
                                                                "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(ui_server, tmp_path_factory: pytest.TempPathFactory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'difflab[uitest]')")
    from selenium.webdriver.chrome.service import Service

    browser_path, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    # --no-sandbox: CI runs as root; the --disable-*/--no-first-run flags stop Chromium's background connections
    # (component updates, sync, QUIC, first-run pings), which a machine with no outside network refuses by the
    # dozen; a fresh profile so no state from another run (or a running browser) is picked up
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def _open_ui(driver, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/ui/")
    wait = WebDriverWait(driver, 180)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#txt2img_prompt textarea"))
    # the model list arrives with the page's load event
    wait.until(lambda d: "tiny" in d.find_element(By.CSS_SELECTOR, "#txt2img_model input").get_attribute("value"))
    return wait


def _type(driver, selector: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, selector)
    box.clear()
    box.send_keys(value)


def _present(wait, selector: str):
    """The element once it is in the page: what a click on a tab or an accordion reveals is rendered a moment
    later (a find right after the click failed on a loaded CI machine)."""
    from selenium.webdriver.common.by import By

    return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector))


def _toasts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [toast.text for toast in driver.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid=toast-body]")]


def _status(driver, tab: str = "txt2img") -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{tab}_status textarea").get_attribute("value")


@needs_chromium
def test_browser_generate_then_click_an_image_shows_its_parameters(ui_server, browser) -> None:
    """Issue 22: clicking a gallery image showed the toast "'NoneType' object is not subscriptable" and blanked
    the metadata panel."""
    from selenium.webdriver.common.by import By

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    gallery_text = driver.find_element(By.CSS_SELECTOR, "#txt2img_gallery").text
    assert "Drop" not in gallery_text and "Upload" not in gallery_text  # output only
    assert driver.find_element(By.CSS_SELECTOR, "#txt2img_sampler input").get_attribute("value") == "model default"
    assert driver.find_element(By.CSS_SELECTOR, "#txt2img_seed input").get_attribute("value") == "-1"
    driver.find_element(By.CSS_SELECTOR, "#txt2img_prompt textarea").send_keys("a green square")
    for field, value in (("steps", "2"), ("width", "32"), ("height", "32"), ("n", "2")):
        _type(driver, f"#txt2img_{field} input[type=number]", value)
    _type(driver, "#txt2img_seed input", "77")
    driver.find_element(By.CSS_SELECTOR, "#txt2img_generate").click()
    wait.until(lambda d: "done" in _status(d))
    assert "seed 77, 78" in _status(driver)
    images = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#txt2img_gallery img"))
    assert len(images) == 2
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", images[1]))
    assert driver.execute_script("return arguments[0].naturalWidth", images[1]) == 32
    # download: the file behind a gallery image (what its download button saves) is the PNG as written, with the
    # parameters and record that regenerate it, not a re-encoded copy without them
    import io
    import urllib.request

    from PIL import Image

    with urllib.request.urlopen(images[1].get_attribute("src"), timeout=30) as answer:
        with Image.open(io.BytesIO(answer.read())) as downloaded:
            assert downloaded.format == "PNG" and downloaded.size == (32, 32)
            assert "a green square" in downloaded.info["parameters"] and "Seed: 78" in downloaded.info["parameters"]
            assert '"seed": 78' in downloaded.info["difflab"]
    # the second image: its own seed (78) must reach the metadata panel
    images[1].click()
    metadata = wait.until(lambda d: "Seed: 78" in d.find_element(By.CSS_SELECTOR, "#txt2img_metadata").text
                          and d.find_element(By.CSS_SELECTOR, "#txt2img_metadata").text)
    assert "a green square" in metadata
    time.sleep(1.0)  # an error toast appears a moment after the event's answer
    assert _toasts(driver) == []
    driver.save_screenshot(str(artifacts_dir() / "ui-txt2img.png"))
    # reuse seed: the clicked image's seed goes back in the form
    driver.find_element(By.CSS_SELECTOR, "#txt2img_reuse_seed").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#txt2img_seed input").get_attribute("value") == "78")
    driver.find_element(By.CSS_SELECTOR, "#txt2img_random_seed").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#txt2img_seed input").get_attribute("value") == "-1")
    assert _toasts(driver) == []


@needs_chromium
def test_browser_live_preview_then_interrupt_stops_the_running_job(ui_server, browser) -> None:
    """The server's step previews (on by default with --ui) appear under the progress bar while the job runs;
    Interrupt then stops it within a step."""
    from selenium.webdriver.common.by import By

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    assert not driver.find_elements(By.CSS_SELECTOR, "#txt2img_preview img")  # nothing before a job
    driver.find_element(By.CSS_SELECTOR, "#txt2img_prompt textarea").send_keys("a long job")
    for field, value in (("steps", "150"), ("width", "64"), ("height", "64")):
        _type(driver, f"#txt2img_{field} input[type=number]", value)
    driver.find_element(By.CSS_SELECTOR, "#txt2img_generate").click()
    preview = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#txt2img_preview img"))[0]
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview))
    assert driver.execute_script("return arguments[0].naturalWidth", preview) == 64  # the 64 px job's preview
    step = int(re.search(r"step (\d+)/150", _status(driver)).group(1))
    value = driver.find_element(By.CSS_SELECTOR, "#txt2img_progress progress").get_attribute("value")
    assert 0 < step < 150 and 0 < int(value) < 150  # the progress bar moves with the job
    driver.save_screenshot(str(artifacts_dir() / "ui-live-preview.png"))
    driver.find_element(By.CSS_SELECTOR, "#txt2img_interrupt").click()
    wait.until(lambda d: "interrupted" in _status(d))
    job_id = re.search(r"job ([0-9a-f]{32})", _status(driver)).group(1)
    job = httpx.get(f"{ui_server.url}/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["progress"]["step"] < 150
    assert _toasts(driver) == []
    driver.save_screenshot(str(artifacts_dir() / "ui-interrupted.png"))
    assert not driver.find_elements(By.CSS_SELECTOR, "#txt2img_preview img")  # gone with the job


def _tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    next(button for button in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
         if button.text.strip() == name).click()


@needs_chromium
def test_browser_inpaints_what_the_brush_paints(ui_server, browser, tmp_path: Path) -> None:
    """img2img with a mask drawn in the page: the brush's strokes (not an uploaded file) become the mask."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    _tab(driver, "img2img")
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    _present(wait, "#img2img_prompt textarea").send_keys("a red square")
    _type(driver, "#img2img_steps input[type=number]", "2")
    driver.find_element(By.CSS_SELECTOR, "#img2img_editor input[type=file]").send_keys(str(init))
    canvas = wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, "#img2img_editor canvas")
                                   if c.size["width"] > 0])[-1]
    brush = driver.find_element(By.CSS_SELECTOR, "#img2img_editor button[aria-label=Brush]")
    assert "highlight" in brush.get_attribute("class")  # the brush is the tool once an image is in
    time.sleep(1.0)  # the editor draws the image into the canvas after the upload
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    # a stroke across the middle of the picture (the canvas centres it)
    ActionChains(driver).move_to_element_with_offset(canvas, -12, 0).click_and_hold().move_by_offset(8, 0) \
        .move_by_offset(8, 0).move_by_offset(8, 0).release().perform()
    driver.find_element(By.CSS_SELECTOR, "#img2img_generate").click()
    wait.until(lambda d: "done" in _status(d, "img2img"))
    job_id = re.search(r"job ([0-9a-f]{32})", _status(driver, "img2img")).group(1)
    request = httpx.get(f"{ui_server.url}/v1/jobs/{job_id}").json()["request"]
    assert request["init_image"] and request["mask"], request
    with Image.open(ui_server.data_dir / "inputs" / request["mask"]) as mask:
        assert mask.size == (64, 64) and mask.getpixel((32, 32)) == 255  # painted: redrawn
        assert mask.getpixel((2, 2)) == 0 and mask.getpixel((32, 60)) == 0  # the rest is kept
    assert _toasts(driver) == []
    driver.save_screenshot(str(artifacts_dir() / "ui-inpaint.png"))


@needs_chromium
def test_browser_png_info_then_send_to_txt2img(ui_server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    _tab(driver, "PNG Info")
    path = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_PARAMETERS)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    # the drop zone's file input: what a dropped file reaches
    _present(wait, "#pnginfo_file input[type=file]").send_keys(str(path))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#pnginfo_parameters textarea")
               .get_attribute("value") == A1111_PARAMETERS)
    driver.save_screenshot(str(artifacts_dir() / "ui-pnginfo.png"))
    driver.find_element(By.CSS_SELECTOR, "#pnginfo_to_txt2img").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#txt2img_prompt textarea").get_attribute("value")
               == "a castle on a hill")
    assert driver.find_element(By.CSS_SELECTOR, "#txt2img_prompt textarea").is_displayed()  # its tab is shown

    def value(selector: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, selector).get_attribute("value")

    assert value("#txt2img_negative textarea") == "fog" and value("#txt2img_seed input") == "1234"
    assert value("#txt2img_steps input[type=number]") == "3" and value("#txt2img_height input[type=number]") == "40"
    assert value("#txt2img_sampler input") == "DPM++ 2M Karras"
    assert _toasts(driver) == []


@needs_chromium
def test_browser_controlnet_unit_previews_its_map(ui_server, browser, tmp_path: Path) -> None:
    """"Preview map" shows the preprocessed map the unit's ControlNet would see: the engine's canny of the
    picture at the output size, the same map POST /controlnet/detect answers."""
    import numpy as np
    from selenium.webdriver.common.by import By

    from difflab.engine.control import canny

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    picture = Image.new("RGB", (32, 32), "black")
    picture.paste((230, 40, 40), (8, 8, 24, 24))
    path = tmp_path / "picture.png"
    picture.save(path)
    for field, value in (("width", "64"), ("height", "64")):
        _type(driver, f"#txt2img_{field} input[type=number]", value)
    driver.find_element(By.CSS_SELECTOR, "#txt2img_control2 button.label-wrap").click()  # open unit 2
    _present(wait, "#txt2img_control2_image input[type=file]").send_keys(str(path))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#txt2img_control2_image img"))
    driver.find_element(By.CSS_SELECTOR, "#txt2img_control2_preview").click()
    shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#txt2img_control2_map img"))[0]
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", shown))
    made = Image.open(io.BytesIO(httpx.get(shown.get_attribute("src"), timeout=30).content)).convert("RGB")
    expected = canny(picture.resize((64, 64), Image.LANCZOS))
    assert made.size == (64, 64) and np.array_equal(np.asarray(made), np.asarray(expected))
    assert _toasts(driver) == []
    driver.save_screenshot(str(artifacts_dir() / "ui-controlnet.png"))


@needs_chromium
def test_browser_history_tab_shows_past_jobs_and_their_parameters(ui_server, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    wait = _open_ui(driver, ui_server.url)
    tab = next(button for button in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
               if button.text.strip() == "History")
    tab.click()
    images = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history_gallery img"))
    images[0].click()
    wait.until(lambda d: "Seed:" in d.find_element(By.CSS_SELECTOR, "#history_metadata").text)
    time.sleep(1.0)
    assert _toasts(driver) == []
    driver.save_screenshot(str(artifacts_dir() / "ui-history.png"))


def test_history_lists_finished_jobs_and_survives_a_restart(client, ui_server) -> None:
    _, _, metadata, *_ = client.predict(*txt2img(prompt="history check", seed=5), api_name="/generate")
    gallery = client.predict(api_name="/history")
    assert any("history check" in (item.get("caption") or "") for item in gallery)
    before = len(gallery)
    ui_server.stop()
    ui_server.start()
    again = gradio_client.Client(f"{ui_server.url}/ui/", verbose=False).predict(api_name="/history")
    assert len(again) == before and "history check" in again[0]["caption"]


def test_the_ui_names_the_servers_backend(client, tmp_path: Path) -> None:
    assert client.predict(api_name="/backend") == "backend: torch"  # what the page shows under its title
    from difflab.serve.config import ServeConfig
    from difflab.serve.ui import backend_label

    assert backend_label(ServeConfig(data_dir=tmp_path, compile=True)) == \
        "backend: torch (U-Net compiled with torch.compile)"
    pytest.importorskip("openvino")
    assert backend_label(ServeConfig(data_dir=tmp_path, backend="openvino")) == "backend: openvino f32"


def test_the_root_leads_to_the_ui_and_the_start_banner_names_it(ui_server) -> None:
    import httpx

    response = httpx.get(f"{ui_server.url}/", follow_redirects=False, timeout=30)
    assert response.status_code in (302, 307) and response.headers["location"] == "/ui/"
    assert f"web UI     {ui_server.url}/ui/" in ui_server.log.read_text()



def test_the_ui_turns_step_previews_on_by_default() -> None:
    """The UI's live preview needs the server's previews: on (every UI_PREVIEW_EVERY steps) with --ui unless
    --preview-every says otherwise; off for the API alone."""
    from difflab.serve.config import UI_PREVIEW_EVERY, ServeConfig

    assert ServeConfig(data_dir=Path("unused"), ui=True).preview_every == UI_PREVIEW_EVERY > 0
    assert ServeConfig(data_dir=Path("unused"), ui=False).preview_every == 0
    assert ServeConfig(data_dir=Path("unused"), ui=True, preview_every=0).preview_every == 0
    assert ServeConfig(data_dir=Path("unused"), preview_every=2).preview_every == 2
