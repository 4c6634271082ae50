"""The grant views in Chromium against the real API: the billing page's grants with what is
left and when they expire (rollover credits among them), and the admin's instance view that
lists grants, adds one and voids one."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from creditsync import catalog, convergence, grants, instances, plans, usage
from creditsync.storage import database
from tests.core.helpers import accept
from tests.pages.checks import shoot, spoken
from tests.pages.conftest import Console, Site
from tests.pages.test_admin import sign_in

pytestmark = pytest.mark.postgres

ROLLOVER = plans.Rollover(max_credits=1000, expires_after=dt.timedelta(days=30))


def on_pro_with_grants(site: Site, name: str) -> tuple[str, dt.datetime]:
    """Pro (with rollover) bought 40 days ago, 4,200 used then: at the reset 800 unused
    credits rolled over; then support granted 250 expiring in 10 days and 100 for good."""
    api = site.api
    now = api.now()
    with database.write(api.engine) as conn:
        catalog.upsert(conn, plans.Plan("pro", 5000, display_name="Pro", rollover=ROLLOVER),
                       now)
    instance = api.instance(name)
    bought = now - dt.timedelta(days=40)  # all through the core, on a clock set back
    instances.provision(api.engine, instance, now=bought)
    accept(api.engine, instance, "PaidPlanPurchased", bought, "pro")
    convergence.converge(api.engine, trigger="webhook", actor="webhook",
                         instance_ids=[instance], now=bought)
    usage.consume(api.engine, instance, 4200, "month", now=bought + dt.timedelta(days=3))
    convergence.converge(api.engine, trigger="timer", actor="timer", instance_ids=[instance],
                         now=now)
    soon = now + dt.timedelta(days=10)
    grants.create(api.engine, instance, 250, reason="spring promotion", now=now,
                  priority=40, expires_at=soon)
    grants.create(api.engine, instance, 100, reason="support ticket 1234", now=now)
    return instance, soon


def test_billing_shows_grants_with_what_is_left_and_rollover_credits(
        page: Page, site: Site) -> None:
    instance, _soon = on_pro_with_grants(site, "granted")
    page.goto(f"{site.url}/billing?instance={site.api.token(instance)}")
    expect(page.locator("#grants-body")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#bonus")).to_have_text("1,150")
    expect(page.locator("#rollover")).to_have_text("800")
    expect(page.locator("#grants-summary")).to_contain_text(
        "1,150 credits on 3 grants; 800 rolled over from last period; the soonest expire on")
    rows = page.locator("#grants-body tbody tr")
    expect(rows).to_have_count(3)
    texts = [spoken(rows.nth(n)) for n in range(3)]
    assert [t[0] for t in texts] == ["250 of 250", "800 of 800", "100 of 100"]  # spent order
    expect(page.locator("#grants-summary")).to_contain_text(
        "At each monthly reset up to 1,000 unused plan credits roll over, for 30 days.")
    assert texts[1][2:] == ["Rolled over from last period 800 unused plan credits roll over",
                            "Active"]
    assert texts[2][1:] == ["Never", "From support Support ticket 1234", "Active"]
    shoot(page, "billing-grants")


def test_admin_lists_adds_and_voids_grants(page: Page, site: Site, console: Console) -> None:
    api = site.api
    instance, _soon = on_pro_with_grants(site, "admin-granted")
    sign_in(page, site)
    page.get_by_label("Instance id contains").fill(instance)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name=instance).click()
    expect(page.get_by_role("heading", name=f"Instance {instance}")).to_be_focused()
    live = page.locator("#detail-grants tbody tr[data-status=live]")
    expect(live).to_have_count(3)

    form = page.locator("#grant")
    form.get_by_role("button", name="Grant credits").click()
    expect(page.locator("#detail-alert")).to_have_text(
        "Enter a whole number of credits, 1 or more.")
    page.get_by_label("Credits to grant").fill("75")
    page.get_by_label("Why granted").fill("beta tester")
    page.get_by_label("Priority").fill("0")
    later = (api.now() + dt.timedelta(days=60)).date().isoformat()
    page.get_by_label("Expires on").fill(later)
    form.get_by_role("button", name="Grant credits").click()
    expect(page.locator("#detail-status")).to_contain_text("Granted 75 credits to")
    expect(live).to_have_count(4)
    first = spoken(live.first)
    assert first[0] == "75 of 75"  # priority 0: spent first
    assert first[2] == "From support Beta tester"
    expect(page.locator("#detail-bonus")).to_have_text("1,225")
    shoot(page, "admin-grants", part=page.locator("#detail-grants-section"))

    live.first.get_by_role("button", name="Void the grant of 75 credits").click()
    expect(page.locator("#detail-status")).to_contain_text(
        "Voided the grant of 75 credits: its 75 remaining credits left")
    expect(live).to_have_count(3)
    voided = page.locator("#detail-grants tbody tr[data-status=voided]")
    expect(voided).to_have_count(1)
    assert spoken(voided)[3] == "Voided"
    expect(page.locator("#detail-bonus")).to_have_text("1,150")
    expect(page.locator("#detail-history tbody tr").first).to_have_attribute(
        "data-kind", "grant_voided")
    assert console.problems == []
