"""Fixtures for the page tests: the real API under uvicorn on PostgreSQL, and real Chromium.

Each test module gets a fresh PostgreSQL database (cloned from the session's template: the
schema at head, the built-in catalog seeded) and its own `creditsync api` server on a free
port of 127.0.0.1, reached by the browser and, for set-up, by `site.api` (the API tests'
signing helpers: webhooks, instance tokens, the admin token). Chromium is Debian's
(`/usr/bin/chromium`), driven by Playwright; `playwright install` is never needed.

`page` fails its test on any console error or warning and on any uncaught exception, except
the failed requests the test says it provokes (`console.expect_failure(...)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from creditsync import marketplace_standin
from creditsync.storage import database
from creditsync_api import devkeys
from tests.api.conftest import Api, Server, server_env
from tests.support.database import drop_pg_database, new_pg_database
from tests.support.postgres import PostgresCluster

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
NARROW: ViewportSize = {"width": 360, "height": 780}


@dataclass
class Site:
    """The app under test: its base URL, and the API helpers to set up data."""

    url: str
    api: Api
    database_url: str
    server: Server


@pytest.fixture(scope="module")
def site(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("pages")
    keys, _ = devkeys.ensure(root / "devkeys")
    name = new_pg_database(pg)
    url = pg.url(name)
    server = Server(["api"], server_env(url, keys), root / "api.log")
    engine = database.create(url)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Site(server.url, Api(client, engine, keys, "postgres", "uvicorn"), url, server)
    finally:
        server.stop()
        engine.dispose()
        drop_pg_database(pg, name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, per module: Playwright's sync API keeps an asyncio loop running in this
    thread while it is open, and `asyncio.run` in any later test on the same worker (the
    inbox and operator tests) would fail with "cannot be called from a running event loop"."""
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=CHROMIUM_ARGS)
        try:
            yield found
        finally:
            found.close()


@dataclass
class Console:
    """What the page logged. Only failed requests a test provokes on purpose are allowed."""

    problems: list[str] = field(default_factory=list)
    allowed: list[tuple[str, str]] = field(default_factory=list)

    def expect_failure(self, path: str, status: int | None) -> None:
        """Chromium logs a failed request as a console error: allow it for `path` only
        (`status` None: the request was aborted, no answer)."""
        text = ("net::ERR_FAILED" if status is None
                else f"the server responded with a status of {status} ")
        self.allowed.append((path, text))

    def on_message(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        where = urlsplit(message.location.get("url", "")).path
        if message.text.startswith("Failed to load resource") and any(
                where == path and text in message.text for path, text in self.allowed):
            return
        self.problems.append(f"console {message.type}: {message.text} ({where})")

    def on_error(self, error: Exception) -> None:
        self.problems.append(f"uncaught exception: {error}")


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, site: Site, console: Console) -> Iterator[Page]:
    """A fresh browser context (en-US, UTC, 1280×900) on `site`; fails on console noise."""
    context = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC",
                                  base_url=site.url)
    context.set_default_timeout(10_000)
    found = context.new_page()
    found.on("console", console.on_message)
    found.on("pageerror", console.on_error)
    try:
        yield found
    finally:
        context.close()
    assert console.problems == []


SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@dataclass
class Marketplace:
    """The marketplace's STAND-IN (not Wix: `creditsync.marketplace_standin`), and a second
    API server on the module's database with the marketplace source on, at `site.url`."""

    standin: marketplace_standin.StandIn
    url: str  # the stand-in's
    site: Site


@pytest.fixture(scope="module")
def marketplace(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Marketplace]:
    app_id = "pages-app"
    running = marketplace_standin.serve(
        marketplace_standin.StandIn(app_id, site.api.keys.app_secret))
    env = server_env(site.database_url, site.api.keys, CREDITSYNC_WIX_APP_ID=app_id,
                     CREDITSYNC_WIX_API_URL=running.url, CREDITSYNC_MARKETPLACE_RATE="1000")
    server = Server(["api"], env, tmp_path_factory.mktemp("marketplace") / "api.log")
    try:
        server.wait_ready()
        yield Marketplace(running.standin, running.url,
                          Site(server.url, site.api, site.database_url, server))
    finally:
        server.stop()
        running.stop()
