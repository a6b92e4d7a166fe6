"""GET /: a page to try the service in a browser (service/static/), served without an API key.

The page is static (no build step, nothing from elsewhere: the service may run offline) and calls the
public API only (/v1/models/default, /detect), sending the API key the user gives it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

# Path -> (file in service/static/, media type). service/api/auth.py's PAGE_PATHS leaves exactly these open.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
}
# Only this origin's own files; the images shown are the user's own, as blob: URLs.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    # importlib.resources: the files as installed (the wheel ships them as package data), not the checkout's.
    return resources.files("service").joinpath("static", name).read_bytes()


def _asset(path: str) -> Response:
    name, media_type = ASSETS[path]
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return _asset("/")


@router.get("/static/page.js")
async def script() -> Response:
    return _asset("/static/page.js")


@router.get("/static/page.css")
async def style() -> Response:
    return _asset("/static/page.css")
