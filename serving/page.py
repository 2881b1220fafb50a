"""The manager page: one static HTML + vanilla JS + CSS page served at `GET /`.

Loading the page needs no key; the page asks for an API key, keeps it in `sessionStorage` (gone when the
tab closes) and calls the JSON API with it, so the page can show nothing the key could not read anyway.
No build step and no CDN: the files ship in the package (`serving/static`) and charts are inline SVG.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from serving.errors import NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}

page_router = APIRouter(include_in_schema=False)

# The page only talks to its own origin; no inline script, no third-party anything.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@page_router.get("/", response_class=HTMLResponse)
def manager_page() -> HTMLResponse:
    """The manager page (HTML; it asks for an API key and calls the API itself)."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@page_router.get("/static/{name}")
def static_asset(name: str) -> FileResponse:
    """The page's script and stylesheet (a fixed list: no path from the request touches the disk)."""
    if name not in ASSETS:
        raise NotFoundError("not found")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)
