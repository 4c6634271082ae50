"""/docs in Chromium against the real API: Swagger UI renders from the app's own assets under
its CSP (the `page` fixture fails on any console error, a CSP violation included), and the
browser asks no other origin for anything."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Request, expect

from tests.pages.conftest import Site

pytestmark = pytest.mark.postgres


def test_swagger_ui_renders_offline_under_its_csp(page: Page, site: Site) -> None:
    origin = urlsplit(site.url).netloc
    asked: list[str] = []

    def record(request: Request) -> None:
        asked.append(request.url)

    page.on("request", record)
    page.goto(f"{site.url}/docs")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("creditsync")
    expect(page.locator(".opblock-summary-path", has_text="/api/webhooks/billing")).to_be_visible()
    page.locator(".opblock-summary", has_text="/healthz").first.click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    expect(page.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")

    others = [url for url in asked
              if not url.startswith("data:") and urlsplit(url).netloc != origin]
    assert others == []
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in asked)
