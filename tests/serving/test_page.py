"""The manager page: served without a key, self-contained (no CDN), and renders in a real browser."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_app(home: Path) -> FastAPI:
    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'dealrisk.db'}",
        tracking_uri=f"sqlite:///{home / 'm.db'}",
        model_uri=str(home / "no-model-here"), reload_interval_s=0, max_body_bytes=1_000_000,
        max_batch_deals=100, max_events_per_deal=1000,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("page"))) as c:
        yield c


def test_page_loads_without_a_key_and_asks_for_one(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    html = res.text
    assert 'id="api-key"' in html and "sessionStorage" in html
    for part in ('id="pipeline"', 'id="filters"', 'id="tabs"', 'id="view"', 'id="model"'):
        assert part in html
    assert "default-src 'self'" in res.headers["content-security-policy"]


def test_assets_are_local_and_nothing_loads_from_elsewhere(client: TestClient) -> None:
    html = client.get("/").text
    js = client.get("/static/app.js")
    css = client.get("/static/style.css")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for text in (html, js.text, css.text):
        assert not re.search(r"(src|href)=\"https?://", text)  # no CDN: the machine may be offline
    # The page calls the API with the key it keeps, and never writes API data as HTML.
    assert "Authorization: `Bearer ${key}`" in js.text and "innerHTML" not in js.text
    for path in ("/v1/pipelines", "/at-risk", "/health", "/forecast"):
        assert path in js.text


def test_unknown_assets_are_not_served(client: TestClient) -> None:
    assert client.get("/static/../page.py").status_code == 404
    assert client.get("/static/secret.txt").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine for the headless screenshot")
def test_headless_browser_renders_the_page(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(make_app(tmp_path), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # wait for the server to accept connections (not a timing assertion)
            if server.started:
                break
            time.sleep(0.05)
        shot = tmp_path / "page.png"
        base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"]
        subprocess.run([*base, f"--screenshot={shot}", f"http://127.0.0.1:{port}/"],
                       check=True, capture_output=True, timeout=60)
        dom = subprocess.run([*base, "--dump-dom", f"http://127.0.0.1:{port}/"],
                             check=True, capture_output=True, timeout=60, text=True).stdout
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000
    assert 'id="key-form"' in dom and "Connect" in dom


def test_api_docs_load_their_assets_from_the_service(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    urls = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", docs.text)
    assert urls and all(u.startswith("/static/vendor/") for u in urls), urls  # nothing from a CDN
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN
    assert client.get("/static/vendor/LICENSE-swagger-ui-dist").status_code == 404  # a fixed list
