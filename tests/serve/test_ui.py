"""The Gradio web UI at /ui on a real server: through Gradio's Python client, and in headless Chromium (Debian's
chromium + chromedriver, driven by Selenium) where those are installed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.serve.live_server import LiveServer

gradio_client = pytest.importorskip("gradio_client", reason="the web UI needs gradio (pip install 'difflab[ui]')")
pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'difflab[ui]')")


@pytest.fixture(scope="module")
def ui_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from tests.engine.test_lora import _random_lora

    loras = tmp_path_factory.mktemp("ui-loras")
    lora = _random_lora(models_dir / "tiny", tmp_path_factory.mktemp("lora-work"), seed=1)
    shutil.copy(lora, loras / "style_a.safetensors")
    with LiveServer(tmp_path_factory.mktemp("ui") / "data", models_dir, "--loras-dir", str(loras), ui=True) as server:
        yield server


def test_ui_generates_shows_metadata_and_reuses_settings(ui_server, tmp_path: Path) -> None:
    client = gradio_client.Client(f"{ui_server.url}/ui/", verbose=False)
    no_control = (None, "canny", 1.0)
    gallery, status, metadata = client.predict("a red circle", "blue", "tiny", "Euler a", 3, 5.0, 42, 32, 32, 2,
                                               ["style_a"], 0.5, *no_control, api_name="/generate")
    assert "done, 2 image(s)" in status and len(gallery) == 2
    record = json.loads(metadata)
    assert record["request"]["seed"] == 42 and record["parameters"].startswith(
        "a red circle <lora:style_a:0.5>\nNegative prompt: blue")
    assert [spec.rsplit("/", 1)[-1] for spec in record["request"]["loras"]] == ["style_a.safetensors:0.5"]
    reused = client.predict(metadata, api_name="/reuse")
    assert reused[0] == "a red circle" and reused[2] == "tiny" and reused[3] == "Euler a" and reused[6] == 42
    assert reused[10] == ["style_a:0.5"]

    def error_of(*inputs) -> str:
        try:
            client.predict(*inputs, api_name="/generate")
        except Exception as error:  # gradio_client raises AppError carrying the gr.Error message
            return str(error)
        raise AssertionError(f"no error for {inputs}")

    assert "width" in error_of("a red circle", "", "tiny", "", 3, 5.0, 0, 30, 32, 1, [], 1.0, *no_control)
    assert "loras" in error_of("a red circle", "", "tiny", "", 3, 5.0, 0, 32, 32, 1, ["missing"], 1.0, *no_control)
    # an uploaded control image becomes the request's control: the tiny random model has no canny ControlNet,
    # and the engine's refusal names the control
    edges = tmp_path / "edges.png"
    Image.new("RGB", (32, 32)).save(edges)
    message = error_of("a red circle", "", "tiny", "", 3, 5.0, 0, 32, 32, 1, [], 1.0,
                       gradio_client.handle_file(str(edges)), "canny", 0.8)
    assert "controls" in message and "canny" in message


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium and chromium-driver (apt-get install "
                                                "chromium chromium-driver)")
def test_ui_in_headless_chromium_shows_an_image(ui_server, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'difflab[uitest]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: CI runs as root; the --disable-*/--no-first-run flags stop Chromium's background connections
    # (component updates, sync, QUIC, first-run pings), which a machine with no outside network refuses by the
    # dozen; a fresh profile so no state from another run (or a running browser) is picked up
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(f"{ui_server.url}/ui/")
        wait = WebDriverWait(driver, 180)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        prompt.send_keys("a green square")
        for field, value in (("steps", "2"), ("width", "32"), ("height", "32")):
            box = driver.find_element(By.CSS_SELECTOR, f"#{field} input[type=number]")
            box.clear()
            box.send_keys(value)
        # the model list arrives with the page's load event
        wait.until(lambda d: "tiny" in d.find_element(By.CSS_SELECTOR, "#model input").get_attribute("value"))
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img"))[0]
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert driver.execute_script("return arguments[0].naturalWidth", image) == 32
        assert "done" in driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
    finally:
        driver.quit()


def test_the_root_leads_to_the_ui_and_the_start_banner_names_it(ui_server) -> None:
    import httpx

    response = httpx.get(f"{ui_server.url}/", follow_redirects=False, timeout=30)
    assert response.status_code in (302, 307) and response.headers["location"] == "/ui/"
    assert f"web UI     {ui_server.url}/ui/" in ui_server.log.read_text()
