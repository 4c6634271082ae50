"""/billing in Chromium against the real API: the card, Sync Credits, its errors, history."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from creditsync import reservations
from creditsync.storage import models
from tests.api.conftest import Api, ms
from tests.pages.checks import assert_accessible, shoot, spoken
from tests.pages.conftest import Console, Marketplace, Site

pytestmark = pytest.mark.postgres

_i = models.INSTANCES
SYNC = "/api/billing/sync-credits"


def stuck_on_free(api: Api, name: str) -> str:
    """The original bug: an instance that bought Pro but still has the Free plan's 100."""
    instance = api.instance(name)
    api.install(instance)
    api.buy(instance, "pro", ms(api.now() - dt.timedelta(hours=1)))
    api.execute(_i.update().where(_i.c.instance_id == instance)
                .values(plan_id="free", credits_total=100))
    return instance


def on_pro(api: Api, name: str) -> str:
    instance = api.instance(name)
    api.install(instance)
    api.buy(instance, "pro", ms(api.now() - dt.timedelta(hours=1)))
    return instance


def open_billing(page: Page, site: Site, instance: str, **token: dt.datetime) -> None:
    page.goto(f"{site.url}/billing?instance={site.api.token(instance, **token)}")
    expect(page.locator("#usage")).to_have_attribute("aria-busy", "false")


def card(page: Page) -> dict[str, str]:
    return {name: page.locator(f"#{name}").inner_text()
            for name in ("plan", "total", "used", "bonus", "remaining", "sync-state")}


def test_a_paid_instance_stuck_at_100_clicks_sync_and_sees_5000(
        page: Page, site: Site) -> None:
    api = site.api
    instance = stuck_on_free(api, "stuck")
    open_billing(page, site, instance)
    assert card(page) == {"plan": "Free", "total": "100", "used": "0", "bonus": "0",
                          "remaining": "100", "sync-state": "Out of sync"}
    expect(page.locator("#drift-note")).to_be_visible()
    shoot(page, "billing-out-of-sync")

    held: list[Route] = []
    page.route(f"**{SYNC}", lambda route: held.append(route))  # held: see the loading state
    button = page.get_by_role("button", name="Sync Credits")
    button.click()
    expect(page.locator("#sync")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#sync")).to_be_disabled()
    expect(page.locator("#sync-label")).to_have_text("Syncing…")
    assert len(held) == 1
    held[0].continue_()

    expect(page.get_by_role("status")).to_have_text("Credits updated: 100 → 5,000 (Pro).")
    expect(page.locator("#sync")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#sync")).to_be_enabled()
    assert card(page) == {"plan": "Pro", "total": "5,000", "used": "0", "bonus": "0",
                          "remaining": "5,000", "sync-state": "In sync"}
    expect(page.locator("#drift-note")).to_be_hidden()
    expect(page.locator("#synced")).to_have_text(re.compile(r"now|seconds? ago"))

    # the history lists the repair, newest first, with before → after and why
    first = page.locator("#history-body tbody tr").first
    expect(first).to_have_attribute("data-kind", "drift_repair")
    assert spoken(first)[1:] == ["Credits repaired", "Plan Free to Pro Credits 100 to 5,000",
                                 "Plan free, subscription says pro By Sync Credits"]
    kinds = page.locator("#history-body tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.kind)")
    assert kinds == ["drift_repair", "plan_change", "provision"]
    ledger = api.ledger(instance)[-1]
    assert (ledger.kind, ledger.actor, ledger.credits_total_after) == ("drift_repair", "manual",
                                                                       5000)
    shoot(page, "billing")


def test_sync_credits_says_when_the_marketplace_healed_a_missed_purchase(
        page: Page, marketplace: Marketplace) -> None:
    """With the marketplace source on (its STAND-IN here): a site paid for Pro, the webhook
    never came; Sync Credits asks the marketplace first and says what it found."""
    api = marketplace.site.api
    instance = api.instance("missed")
    api.install(instance)
    marketplace.standin.set_paid(instance, "pro")
    open_billing(page, marketplace.site, instance)
    assert card(page)["total"] == "100"
    page.get_by_role("button", name="Sync Credits").click()
    expect(page.get_by_role("status")).to_have_text(
        "The marketplace says you pay for Pro: credits updated 100 → 5,000.")
    expect(page.locator("#sync-status .notice")).to_have_class(re.compile(r"\bsuccess\b"))
    assert card(page) == {"plan": "Pro", "total": "5,000", "used": "0", "bonus": "0",
                          "remaining": "5,000", "sync-state": "In sync"}
    shoot(page, "billing-marketplace-healed", full_page=False)


def test_sync_credits_when_the_marketplace_cannot_be_asked_still_syncs(
        page: Page, marketplace: Marketplace) -> None:
    instance = stuck_on_free(marketplace.site.api, "unasked")
    open_billing(page, marketplace.site, instance)
    marketplace.standin.fail_with(503)
    try:
        page.get_by_role("button", name="Sync Credits").click()
        expect(page.get_by_role("status")).to_have_text(
            "Credits updated: 100 → 5,000 (Pro). The marketplace could not be asked what your "
            "site pays for just now: creditsync will ask it again automatically.")
    finally:
        marketplace.standin.heal()
    expect(page.locator("#sync-alert")).to_be_empty()  # not an error: the sync did its part
    assert card(page)["total"] == "5,000"


def test_sync_when_all_is_right_says_so_and_a_second_click_is_rate_limited(
        page: Page, site: Site, console: Console) -> None:
    instance = on_pro(site.api, "right")
    open_billing(page, site, instance)
    assert card(page)["sync-state"] == "In sync"

    # keyboard only: the skip link comes first, Sync Credits is reachable and pressable
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "sync":
            break
    expect(page.locator("#sync")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text(
        "Everything was already right: 5,000 credits a month on the Pro plan.")
    expect(page.locator("#sync")).to_be_focused()  # focus comes back after the busy state

    console.expect_failure(SYNC, 429)
    page.keyboard.press("Enter")
    alert = page.locator("#sync-alert")
    expect(alert).to_have_text(re.compile(r"You synced a moment ago: try again in [1-5] s\."))
    expect(page.locator("#sync")).to_be_disabled()  # for as long as the server asked
    shoot(page, "billing-rate-limited")
    expect(page.locator("#sync")).to_be_enabled(timeout=8_000)
    expect(page.get_by_role("status")).to_have_text("You can sync again now.")


def test_an_expired_token_says_reload(page: Page, site: Site, console: Console) -> None:
    api = site.api
    instance = stuck_on_free(api, "expired")
    open_billing(page, site, instance)

    # the token expires while the page is open: the server refuses the sync with 401
    expired = api.token(instance, now=api.now() - dt.timedelta(hours=25))
    page.route(f"**{SYNC}", lambda route: route.continue_(
        headers={**route.request.headers, "authorization": f"Bearer {expired}"}))
    console.expect_failure(SYNC, 401)
    page.get_by_role("button", name="Sync Credits").click()
    alert = page.get_by_role("alert").filter(has_text="expired")
    expect(alert).to_have_text("Your session has expired: reload the page to continue."
                               "Reload page")
    assert card(page)["total"] == "100"  # nothing changed
    with page.expect_navigation():
        alert.get_by_role("button", name="Reload page").click()

    # opened with an expired token, the page says the same before anything else
    console.expect_failure("/api/billing/credits", 401)
    open_billing(page, site, instance, now=api.now() - dt.timedelta(hours=25))
    expect(page.locator("#page-alert")).to_have_text(
        "Your session has expired: reload the page to continue.Reload page")
    expect(page.locator("#sync")).to_be_disabled()
    assert_accessible(page)


def test_a_network_error_offers_retry(page: Page, site: Site, console: Console) -> None:
    instance = stuck_on_free(site.api, "offline")
    open_billing(page, site, instance)
    page.route(f"**{SYNC}", lambda route: route.abort())
    console.expect_failure(SYNC, None)
    page.get_by_role("button", name="Sync Credits").click()
    alert = page.locator("#sync-alert")
    expect(alert).to_have_text(
        "Could not reach creditsync: check your connection, then try again.Retry")
    expect(page.locator("#sync")).to_be_enabled()
    shoot(page, "billing-network-error")

    page.unroute(f"**{SYNC}")  # back online
    alert.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("Credits updated: 100 → 5,000 (Pro).")
    expect(alert).to_be_empty()


def test_history_pages_ten_entries_at_a_time(page: Page, site: Site) -> None:
    api = site.api
    instance = on_pro(api, "busy")
    for n in range(1, 12):  # 2 + 11 = 13 ledger rows
        response = api.http.post("/api/credits/consume", headers=api.auth(instance),
                                 json={"amount": n, "idempotencyKey": f"job-{n}"})
        assert response.status_code == 200, response.text
    open_billing(page, site, instance)
    rows = page.locator("#history-body tbody tr")
    expect(rows).to_have_count(10)
    assert spoken(rows.first)[1:3] == ["Credits used", "Used 55 to 66"]
    assert card(page)["used"] == "66"
    newer, older = (page.get_by_role("button", name="Newer"),
                    page.get_by_role("button", name="Older"))
    expect(newer).to_be_disabled()
    expect(page.locator("#history-where")).to_have_text("Page 1")

    older.click()
    expect(page.locator("#history-where")).to_have_text("Page 2")
    expect(rows).to_have_count(3)
    kinds = rows.evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds == ["usage", "plan_change", "provision"]
    assert spoken(rows.first)[1:3] == ["Credits used", "Used 0 to 1"]
    expect(older).to_be_disabled()
    expect(page.locator("#history-title")).to_be_focused()  # focus was on the disabled button

    newer.click()
    expect(page.locator("#history-where")).to_have_text("Page 1")
    expect(rows).to_have_count(10)
    expect(newer).to_be_disabled()


def test_without_a_token_the_page_says_how_to_open_it(page: Page) -> None:
    page.goto("/billing")
    expect(page.locator("#page-alert")).to_have_text(
        "Open this page from your site's dashboard: its link carries the sign-in that tells "
        "creditsync which site you are.")
    expect(page.locator("#sync")).to_be_disabled()
    assert_accessible(page)


def test_the_pages_are_served_with_a_strict_content_security_policy(site: Site) -> None:
    billing = site.api.http.get("/billing")
    admin = site.api.http.get("/admin")
    assert billing.status_code == admin.status_code == 200
    assert billing.headers["content-type"] == "text/html; charset=utf-8"
    for response in (billing, admin):
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in admin.headers["content-security-policy"]
    assert admin.headers["x-frame-options"] == "DENY"
    script = site.api.http.get("/static/billing.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    again = site.api.http.get("/static/billing.js",
                              headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    missing = site.api.http.get("/static/billing.html")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_the_console_guard_is_not_vacuous(browser: Browser, site: Site) -> None:
    """What `page` fails a test on: errors, uncaught exceptions, and failed requests other
    than the ones the test said it provokes."""
    guard = Console()
    guard.expect_failure("/api/billing/credits", 401)
    context = browser.new_context(base_url=site.url)
    try:
        page = context.new_page()
        page.on("console", guard.on_message)
        page.on("pageerror", guard.on_error)
        page.goto("/billing")
        page.evaluate("fetch('/api/billing/credits')")  # expected: allowed
        page.evaluate("fetch('/api/billing/history')")  # not expected
        page.evaluate("console.error('boom')")
        page.evaluate("setTimeout(() => { throw new Error('bang'); })")
        page.wait_for_timeout(500)
    finally:
        context.close()
    assert sorted(guard.problems) == [
        "console error: Failed to load resource: the server responded with a status of 401 "
        "(Unauthorized) (/api/billing/history)",
        "console error: boom ()",  # evaluated code has no URL
        "uncaught exception: bang"]


def test_credits_held_by_running_jobs_are_shown(page: Page, site: Site) -> None:
    api = site.api
    instance = on_pro(api, "held")
    reservations.reserve(api.engine, instance, 300, "render-1", now=api.now())
    open_billing(page, site, instance)
    assert card(page)["remaining"] == "4,700"
    expect(page.locator("#held")).to_have_text("300")
    expect(page.locator("#usage-caption")).to_have_text(
        "0 of 5,000 plan credits used (0%) · 300 held for running jobs")
