"""The Gradio web UI at /ui on a real server: through Gradio's Python client, and in headless Chromium (Debian's
chromium + chromedriver, driven by Selenium) where those are installed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.serve.live_server import LiveServer

gradio_client = pytest.importorskip("gradio_client", reason="the web UI needs gradio (pip install 'difflab[ui]')")
pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'difflab[ui]')")


@pytest.fixture(scope="module")
def ui_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with LiveServer(tmp_path_factory.mktemp("ui") / "data", models_dir, ui=True) as server:
        yield server


def test_ui_generates_shows_metadata_and_reuses_settings(ui_server) -> None:
    client = gradio_client.Client(f"{ui_server.url}/ui/", verbose=False)
    gallery, status, metadata = client.predict("a red circle", "blue", "tiny", "Euler a", 3, 5.0, 42, 32, 32, 2, "",
                                               api_name="/generate")
    assert "done, 2 image(s)" in status and len(gallery) == 2
    record = json.loads(metadata)
    assert record["request"]["seed"] == 42 and record["parameters"].startswith("a red circle\nNegative prompt: blue")
    reused = client.predict(metadata, api_name="/reuse")
    assert reused[0] == "a red circle" and reused[2] == "tiny" and reused[3] == "Euler a" and reused[6] == 42
    bad = None
    try:
        client.predict("a red circle", "", "tiny", "", 3, 5.0, 0, 30, 32, 1, "", api_name="/generate")
    except Exception as error:  # gradio_client raises AppError carrying the gr.Error message
        bad = str(error)
    assert bad is not None and "width" in bad


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
