"""The API's documentation at `/docs`: Swagger UI served by the app itself, never by a CDN.

Swagger UI's script and stylesheet come from the `fastapi-offline` package (which bundles
swagger-ui-dist) and are served under `/docs/assets/`, so the page works inside a cluster
without internet. It runs under a Content-Security-Policy of this origin only (its one inline
script, Swagger UI's start-up, is allowed by its hash): no third-party script ever runs on the
origin of `/admin`. FastAPI's own `/docs` and `/redoc` (CDN-loaded) are turned off in
`main.create_app`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html

from creditsync_api import errors

router = APIRouter(include_in_schema=False)

PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
               "swagger-ui.css": "text/css; charset=utf-8"}
FAVICON = "/static/favicon.svg"  # the pages' icon (routes/pages.py)
# Swagger UI's defaults would show a badge image from the online validator's site
PARAMETERS = {"validatorUrl": None}

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def asset(name: str) -> Asset:
    """One of Swagger UI's files, read once from the package that bundles them."""
    body = (resources.files("fastapi_offline") / "static" / name).read_bytes()
    return Asset(body, ASSET_TYPES[name], f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def csp(inline_scripts: list[str]) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in inline_scripts)
    # data: images: the stylesheet's icons are inline SVGs
    return (f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


@router.get(PATH)
async def docs(request: Request) -> Response:
    """Swagger UI for this API's OpenAPI document."""
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{FAVICON}",
        oauth2_redirect_url=None,
        swagger_ui_parameters={**(request.app.swagger_ui_parameters or {}), **PARAMETERS},
    )
    body = bytes(page.body)
    inline = _INLINE_SCRIPT.findall(body.decode())
    return Response(body, media_type="text/html; charset=utf-8", headers={
        **_COMMON, "Content-Security-Policy": csp(inline), "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache"})


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: Annotated[str, Path(max_length=100)], request: Request) -> Response:
    """Swagger UI's script and stylesheet."""
    if name not in ASSET_TYPES:
        raise errors.ApiError(404, "not_found", f"no docs asset {name}")
    found = asset(name)
    headers = {**_COMMON, "ETag": found.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
