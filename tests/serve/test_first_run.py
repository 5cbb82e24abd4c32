"""A clean first run of `difflab serve`: it says where it is, `/` leads somewhere useful, and `/docs` works on a
machine with no network (Swagger UI and ReDoc served from an installed package, not a CDN)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.live_server import LiveServer

_URL_IN_PAGE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_everything_from_this_server(client, page: str) -> None:
    html = client.get(page).text
    assert "http://" not in html and "https://" not in html, html  # nothing from a CDN (or anywhere else)
    urls = [a or b for a, b in _URL_IN_PAGE.findall(html)]
    assert len(urls) >= 3, urls  # the script, the stylesheet or icon, the schema
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    if page == "/docs":  # Swagger UI 5 (OpenAPI 3.1, what FastAPI writes), not 4, which cannot show this schema
        script = client.get(next(url for url in urls if url.endswith("swagger-ui-bundle.js"))).text
        assert "SwaggerUIBundle" in script and re.search(r'"5\.\d+\.\d+"', script)


def test_the_root_leads_to_the_api_docs_without_a_ui(client) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/docs"


def test_serve_prints_where_the_api_and_its_docs_are(models_dir: Path, tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", models_dir) as server:
        deadline = time.monotonic() + 10
        while f"{server.url}/docs" not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log.read_text()
        assert f"API        {server.url}/v1" in log and f"API docs   {server.url}/docs" in log, log[-2000:]
        assert "web UI" not in log  # no --ui: no UI line (with one: tests/serve/test_ui.py)
        assert httpx.get(f"{server.url}/", follow_redirects=True, timeout=10).status_code == 200
