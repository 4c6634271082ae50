"""The web pages: `/billing` (opened by the marketplace in its iframe) and `/admin`.

Hand-written HTML, CSS and JavaScript in `static/`: no build step, no CDN, so the pages work
offline and inside the marketplace's iframe. The HTML itself carries no data and needs no
credentials; the page's script calls the JSON API with the instance token from `?instance=`
(billing) or the admin token the operator types in, kept in sessionStorage (admin).

Every page is served with a strict Content-Security-Policy (scripts, styles and images from
this origin only; no inline code), and the files are read once at import time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from creditsync_api import errors

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The marketplace's dashboard embeds /billing; nothing may embed /admin.
BILLING_FRAME_ANCESTORS = "'self' https://*.wix.com https://*.editorx.com"
ADMIN_FRAME_ANCESTORS = "'none'"


@dataclass(frozen=True)
class Asset:
    """One file of `static/`, with the ETag browsers revalidate it by."""

    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file in the package's `static/` folder, by name."""
    found: dict[str, Asset] = {}
    for entry in (resources.files("creditsync_api") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in MEDIA_TYPES:
            continue
        body = entry.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:20]
        found[entry.name] = Asset(body, MEDIA_TYPES[suffix], f'"{digest}"')
    return found


ASSETS = load_assets()


def csp(frame_ancestors: str) -> str:
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src 'self'; base-uri 'none'; form-action 'none'; "
            f"frame-ancestors {frame_ancestors}")


_COMMON = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
           # the billing page's URL holds the instance token: never send it elsewhere
           "Referrer-Policy": "no-referrer"}
BILLING_HEADERS = {**_COMMON, "Content-Security-Policy": csp(BILLING_FRAME_ANCESTORS)}
ADMIN_HEADERS = {**_COMMON, "Content-Security-Policy": csp(ADMIN_FRAME_ANCESTORS),
                 "X-Frame-Options": "DENY"}


def _serve(name: str, request: Request, headers: Mapping[str, str]) -> Response:
    asset = ASSETS[name]
    headers = {**headers, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/billing")
async def billing(request: Request) -> Response:
    """Billing & Credits: the plan, the credits, the Sync Credits button, the history."""
    return _serve("billing.html", request, BILLING_HEADERS)


@router.get("/admin")
async def admin(request: Request) -> Response:
    """The operators' dashboard."""
    return _serve("admin.html", request, ADMIN_HEADERS)


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=100)], request: Request) -> Response:
    """The pages' scripts, styles and icons (not the pages themselves)."""
    if name not in ASSETS or name.endswith(".html"):
        raise errors.ApiError(404, "not_found", f"no static file {name}")
    return _serve(name, request, _COMMON)
