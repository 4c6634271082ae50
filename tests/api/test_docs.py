"""`/docs` works offline: Swagger UI's assets come from the app itself, under a strict CSP,
and the page references no other origin (no CDN inside a cluster, no third-party script on
the origin of `/admin`)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from creditsync_api import devkeys, main
from tests.api.conftest import settings_for

REFERENCE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@pytest.fixture(scope="module")
def client(keys: devkeys.DevKeys) -> TestClient:
    # no lifespan: the docs need no database
    return TestClient(main.create_app(settings_for("sqlite://", keys)))


def directives(policy: str) -> dict[str, list[str]]:
    parsed = (part.split() for part in policy.split(";") if part.strip())
    return {name: sources for name, *sources in parsed}


def test_the_docs_page_references_no_other_origin(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text
    assert "https://" not in page.text
    references = REFERENCE.findall(page.text)
    assert references, "the page loads nothing?"
    for ref in references:
        assert ref.startswith("/"), ref
        assert not ref.startswith("//"), ref
    assert "url: '/openapi.json'" in page.text
    assert '"validatorUrl": null' in page.text  # no badge image from the validator's site


def test_the_docs_assets_are_served_by_the_app(client: TestClient) -> None:
    page = client.get("/docs").text
    scripts = re.findall(r'<script src="([^"]+)"', page)
    styles = re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', page)
    styles += re.findall(r'<link[^>]*href="([^"]+)"[^>]*rel="stylesheet"', page)
    icons = re.findall(r'<link rel="shortcut icon" href="([^"]+)"', page)
    assert scripts
    assert styles
    assert icons
    for path, media_type in ([(s, "text/javascript") for s in scripts]
                             + [(s, "text/css") for s in styles]
                             + [(i, "image/svg+xml") for i in icons]):
        asset = client.get(path)
        assert asset.status_code == 200, path
        assert asset.headers["content-type"].startswith(media_type), path
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert len(asset.content) > 100, path
    bundle = client.get(scripts[0])
    assert b"SwaggerUIBundle" in bundle.content
    assert client.get(scripts[0], headers={"If-None-Match": bundle.headers["etag"]}
                      ).status_code == 304


def test_the_docs_page_runs_under_a_csp_of_this_origin_only(client: TestClient) -> None:
    page = client.get("/docs")
    policy = directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for name, sources in policy.items():
        for source in sources:
            assert source in ("'self'", "'none'", "data:") or source.startswith("'sha256-"), (
                f"{name} allows {source}")
    # the one inline script (Swagger UI's start-up) is allowed by its hash, nothing else
    inline = INLINE_SCRIPT.findall(page.text)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_only_the_known_assets_are_served_and_no_cdn_page_remains(client: TestClient) -> None:
    assert client.get("/docs/assets/core.py").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # it loaded its script from a CDN
    assert client.get("/docs/oauth2-redirect").status_code == 404  # no OAuth here
