"""The manager page: one static HTML + vanilla JS + CSS page served at `GET /`.

Loading the page needs no key; the page asks for an API key, keeps it in `sessionStorage` (gone when the
tab closes) and calls the JSON API with it, so the page can show nothing the key could not read anyway.
No build step and no CDN: the files ship in the package (`serving/static`) and charts are inline SVG.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from serving.errors import NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# Swagger UI's files, vendored from the npm package swagger-ui-dist by scripts/vendor-assets.sh.
VENDOR_DIR = STATIC_DIR / "vendor"
VENDOR_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}

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


@page_router.head("/")
def manager_page_head() -> Response:
    """The page's headers without the page, for monitors that send HEAD: 200, no body."""
    return Response(status_code=200, media_type="text/html", headers=SECURITY_HEADERS)


@page_router.get("/static/{name}")
def static_asset(name: str) -> FileResponse:
    """The page's script and stylesheet (a fixed list: no path from the request touches the disk)."""
    if name not in ASSETS:
        raise NotFoundError("not found")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)


@page_router.get("/static/vendor/{name}")
def vendor_asset(name: str) -> FileResponse:
    """Swagger UI's script, stylesheet and icon, served from the package (the docs work offline)."""
    if name not in VENDOR_ASSETS:
        raise NotFoundError("not found")
    return FileResponse(VENDOR_DIR / name, media_type=VENDOR_ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})


@page_router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """The interactive API reference (Swagger UI) with its assets from this service, never a CDN."""
    return get_swagger_ui_html(
        openapi_url=str(request.app.openapi_url), title="dealrisk API",
        swagger_js_url="/static/vendor/swagger-ui-bundle.js", swagger_css_url="/static/vendor/swagger-ui.css",
        swagger_favicon_url="/static/vendor/favicon-32x32.png",
    )
