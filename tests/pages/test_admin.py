"""/admin in Chromium against the real API: sign-in, instances, bulk sync, inbox, charts."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from creditsync import convergence, plans, policy, reservations, seed, usage
from creditsync.storage import models
from tests.api.conftest import CLI, Api, ms
from tests.pages.checks import assert_accessible, shoot, spoken
from tests.pages.conftest import DESKTOP, Console, Site

pytestmark = pytest.mark.postgres

_i = models.INSTANCES
POLICY = policy.Policy()
FLEET = 40  # seeded instances "fleet-0000001" …, every plan, all in sync
STUCK = {"stuck-pro": "pro", "stuck-starter": "starter", "stuck-scale": "scale"}
DAYS = 14  # days of past activity behind the charts


@dataclass(frozen=True)
class Fleet:
    stuck: dict[str, str]  # instance id → the plan it paid for
    quarantined: str  # instance whose purchase names a product the catalog does not know
    repairs: int  # drift repairs in the past DAYS days
    used: int  # credits used in the past DAYS days


def drift(api: Api, instance: str) -> None:
    """The original bug: a paid instance left at the free plan's 100 credits."""
    api.execute(_i.update().where(_i.c.instance_id == instance)
                .values(plan_id="free", credits_total=100))


@pytest.fixture(scope="module")
def fleet(site: Site) -> Fleet:
    """Instances on every plan with two weeks of usage and repairs behind them (made by the
    core's own functions on a clock set back day by day), three paid instances stuck at
    100 credits, and an inbox with applied, stale and quarantined events."""
    api = site.api
    seed.seed(api.engine, FLEET, 0, now=api.now(), prefix="fleet-")
    paid = [f"fleet-{n:07d}" for n in range(1, FLEET + 1) if n % 10 in seed.PAID]
    today = api.now().replace(hour=0, minute=0, second=0, microsecond=0)
    repairs = used = 0
    for back in range(DAYS, 0, -1):
        day = today - dt.timedelta(days=back)
        for k, instance in enumerate(paid):
            amount = 10 * ((back * 7 + k * 3) % 9 + 1)
            usage.consume(api.engine, instance, amount, f"chart-{back}-{k}",
                          now=day + dt.timedelta(hours=9 + k % 8), pol=POLICY)
            used += amount
        broken = paid[: (back * 5) % 4]  # 0 to 3 repairs a day
        for instance in broken:
            drift(api, instance)
        if broken:
            summary = convergence.converge(api.engine, trigger="timer", actor="timer",
                                           instance_ids=broken, now=day + dt.timedelta(hours=6),
                                           pol=POLICY)
            assert summary.repaired == len(broken)
            repairs += len(broken)

    stuck = {}
    for name, plan in STUCK.items():
        instance = api.instance(name)
        api.install(instance)
        api.buy(instance, plan, ms(api.now() - dt.timedelta(hours=2)))
        drift(api, instance)
        stuck[instance] = plan

    # the inbox: a redelivery (answered duplicate, stored once), a stale (older) change, an
    # unknown product
    dup = api.instance("dup")
    body = api.webhook("AppInstalled", dup)
    assert api.post(body).json()["status"] == "applied"
    assert api.post(body).json()["status"] == "duplicate"
    at = ms(api.now() - dt.timedelta(hours=1))
    api.buy(dup, "pro", at)
    assert api.send("PaidPlanChanged", dup, product="starter", previous="pro",
                    at=at - dt.timedelta(minutes=5))["status"] == "stale"
    quarantined = api.instance("mega")
    api.install(quarantined)
    assert api.buy(quarantined, "mega-monthly", at)["status"] == "quarantined"
    return Fleet(stuck, quarantined, repairs, used)


def sign_in(page: Page, site: Site) -> None:
    page.goto("/admin")
    page.get_by_label("Admin token").fill(site.api.keys.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_focused()
    expect(page.locator("#instances-body")).to_have_attribute("aria-busy", "false")


def instance_ids(page: Page) -> list[str]:
    found: list[str] = page.locator("#instances-body tbody tr[data-instance]").evaluate_all(
        "rows => rows.map(r => r.dataset.instance)")
    return found


def test_sign_in_keeps_the_token_for_this_session_only(
        page: Page, site: Site, browser: Browser, console: Console, fleet: Fleet) -> None:
    page.goto("/admin")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("Admin token")).to_be_focused()
    shoot(page, "admin-sign-in")

    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Enter the admin token.")
    console.expect_failure("/api/admin/stats", 401)
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(
        "That is not the admin token: check CREDITSYNC_ADMIN_TOKEN and try again.")
    expect(page.get_by_label("Admin token")).to_have_attribute("aria-invalid", "true")

    sign_in(page, site)
    storage = page.evaluate("[JSON.stringify(sessionStorage), JSON.stringify(localStorage)]")
    assert storage == [f'{{"creditsync.adminToken":"{site.api.keys.admin_token}"}}', "{}"]
    assert page.context.cookies() == []
    page.reload()  # the same tab's session keeps it
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    other = browser.new_context(viewport=DESKTOP, base_url=site.url)  # another session
    try:
        fresh = other.new_page()
        fresh.goto("/admin")
        expect(fresh.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        other.close()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_filter_drifted_instances_preview_and_apply_a_bulk_sync(
        page: Page, site: Site, fleet: Fleet) -> None:
    sign_in(page, site)
    page.get_by_label("Sync state").select_option("Drifted")
    expect(page.locator("#instances-summary")).to_have_text("Showing instances 1–3.")
    assert instance_ids(page) == sorted(fleet.stuck)
    row = page.locator(f"tr[data-instance='{site.api.instance('stuck-pro')}']")
    assert spoken(row)[1:] == [
        site.api.instance("stuck-pro"), "Free to Pro", "100 left of 100 plan pays 5,000", "0",
        "Drifted Credits differ from what the plan pays for", "now"]

    page.get_by_label("Select every instance on this page").check()
    expect(page.locator("#selected-count")).to_have_text("3")
    page.get_by_role("button", name="Preview changes").click()
    expect(page.locator("#bulk-status")).to_have_text(
        "Dry run: 3 instances would change (3 instances scanned). Nothing was written yet.")
    diff = page.locator("#bulk-diff tbody tr")
    expect(diff).to_have_count(3)
    credits = {"pro": "5,000", "scale": "25,000", "starter": "1,000"}
    assert [spoken(diff.nth(n)) for n in range(3)] == [
        [instance, f"Free to {plan.capitalize()}", f"100 to {credits[plan]}", "0",
         f"Plan free, subscription says {plan}"]
        for instance, plan in sorted(fleet.stuck.items())]
    for instance in fleet.stuck:  # a dry run writes nothing
        assert site.api.ledger(instance)[-1].kind == "plan_change"
    shoot(page, "admin-bulk-sync-preview")
    shoot(page, "admin-bulk-sync", part=page.locator("#bulk"))

    page.get_by_role("button", name="Apply to 3 instances").click()
    expect(page.locator("#bulk-status")).to_have_text("Applied: 3 instances repaired.")
    expect(page.locator("#instances-summary")).to_have_text("No instances match these filters.")
    expect(page.locator("#selected-count")).to_have_text("0")
    for instance, plan in fleet.stuck.items():
        last = site.api.ledger(instance)[-1]
        assert (last.kind, last.actor, last.plan_after) == ("drift_repair", "admin", plan)

    page.get_by_label("Sync state").select_option("In sync")
    page.get_by_label("Instance id contains").fill(site.api.prefix + "stuck")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#instances-summary")).to_have_text("Showing instances 1–3.")


def test_instances_search_plan_filter_and_pages(page: Page, site: Site, fleet: Fleet) -> None:
    sign_in(page, site)
    page.get_by_label("Instance id contains").fill("fleet-")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#instances-summary")).to_have_text(
        "Showing instances 1–25; more on the next page.")
    assert instance_ids(page) == [f"fleet-{n:07d}" for n in range(1, 26)]
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#instances-summary")).to_have_text("Showing instances 26–40.")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    expect(page.locator("#instances-title")).to_be_focused()
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#instances-summary")).to_have_text(
        "Showing instances 1–25; more on the next page.")

    page.get_by_label("Plan", exact=True).select_option("Scale")
    expect(page.locator("#instances-summary")).to_have_text("Showing instances 1–4.")
    assert instance_ids(page) == [f"fleet-{n:07d}" for n in (9, 19, 29, 39)]
    page.get_by_label("Installed").select_option("Uninstalled")
    expect(page.locator("#instances-summary")).to_have_text("No instances match these filters.")
    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#instances-summary")).to_have_text(
        "Showing instances 1–25; more on the next page.")
    expect(page.get_by_label("Plan", exact=True)).to_have_value("")


def test_open_an_instance_and_adjust_its_bonus_credits(
        page: Page, site: Site, console: Console, fleet: Fleet) -> None:
    api = site.api
    instance = api.instance("bonus")
    api.install(instance)
    sign_in(page, site)
    page.get_by_label("Instance id contains").fill(instance)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name=instance).click()
    expect(page.get_by_role("heading", name=f"Instance {instance}")).to_be_focused()
    history = page.locator("#detail-history tbody tr")
    expect(history).to_have_count(1)
    expect(history.first).to_have_attribute("data-kind", "provision")

    form = page.locator("#adjust")
    form.get_by_role("button", name="Adjust bonus credits").click()
    expect(page.locator("#detail-alert")).to_have_text(
        "Enter a whole number of credits other than 0.")
    page.get_by_label("Change").fill("-50")
    page.get_by_label("Reason").fill("oops")
    console.expect_failure(f"/api/admin/instances/{instance}/adjust", 400)
    form.get_by_role("button", name="Adjust bonus credits").click()
    expect(page.locator("#detail-alert")).to_have_text(
        f"Instance {instance} has 0 bonus credits; taking 50 would make them negative.")

    page.get_by_label("Change").fill("500")
    page.get_by_label("Reason").fill("support ticket 1234: compensation")
    page.keyboard.press("Enter")
    expect(page.locator("#detail-status")).to_have_text(
        f"Bonus credits of {instance}: 0 → 500.")
    expect(page.locator("#detail-bonus")).to_have_text("500")
    expect(history).to_have_count(2)
    expect(history.first).to_have_attribute("data-kind", "adjustment")
    assert spoken(history.first)[1:] == [
        "Bonus adjusted", "Bonus 0 to 500", "Support ticket 1234: compensation By support"]
    row = page.locator(f"tr[data-instance='{instance}']")
    expect(row.locator("td").nth(3)).to_have_text("600 left of 100incl. 500 bonus")
    entry = api.ledger(instance)[-1]
    assert (entry.kind, entry.actor, entry.bonus_after, entry.reason) == (
        "adjustment", "admin", 500, "support ticket 1234: compensation")
    shoot(page, "admin-instance", part=page.locator("#detail"))

    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.get_by_role("button", name=instance)).to_be_focused()


def test_replay_a_quarantined_webhook_after_adding_its_plan(
        page: Page, site: Site, fleet: Fleet, tmp_path: Path) -> None:
    sign_in(page, site)
    page.get_by_label("Show").select_option("quarantined")
    row = page.locator("#webhooks-body tr[data-status='quarantined']")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(6)).to_have_text(
        "No plan has product id mega-monthly: add it to the catalog, then replay.")
    replay = page.get_by_role("button", name=f"Replay PaidPlanPurchased for {fleet.quarantined}")
    replay.click()
    expect(page.locator("#webhooks-alert")).to_have_text(
        f"PaidPlanPurchased for {fleet.quarantined} is still quarantined: no plan has product "
        "id mega-monthly yet. Add it (creditsync plans apply, or a CreditPlan), then replay.")

    # the operator adds the plan with the CLI, as the runbook says
    catalog = [plans.plan_to_mapping(plan) for plan in plans.DEFAULT_CATALOG.plans]
    catalog.append({"id": "mega", "monthlyCredits": 100_000, "aliases": ["mega-monthly"],
                    "displayName": "Mega"})
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump({"plans": catalog}))
    subprocess.run([*CLI, "plans", "apply", str(path)], check=True, capture_output=True,
                   env={**os.environ, "CREDITSYNC_DATABASE_URL": site.database_url})

    page.get_by_role("button", name="Refresh").click()
    expect(row.locator("td").nth(6)).to_have_text("The catalog knows mega-monthly now: replay it.")
    shoot(page, "admin-webhooks", part=page.locator("#webhooks"))
    replay.click()
    expect(page.locator("#webhooks-status")).to_have_text(
        f"Replayed PaidPlanPurchased for {fleet.quarantined}: applied, and the instance "
        "converged.")
    expect(page.locator("#webhooks-body")).to_have_text(re.compile("No quarantined events."))
    expect(page.get_by_label("Show")).to_contain_text("Quarantined (0)")
    credits = site.api.credits(fleet.quarantined)
    assert (credits["plan"], credits["creditsTotal"]) == ("mega", 100_000)
    expect(page.locator("#plans-body")).to_contain_text("Mega")


def test_the_charts_render_the_stats(page: Page, site: Site, fleet: Fleet) -> None:
    sign_in(page, site)
    stats = site.api.http.get("/api/admin/stats", headers=site.api.admin).json()
    repairs = page.locator("#chart-repairs rect.bar")
    expect(repairs).not_to_have_count(0)
    drawn = repairs.evaluate_all("bars => bars.map(b => Number(b.dataset.value))")
    assert sum(drawn) == sum(d["repairs"] for d in stats["repairsPerDay"]) >= fleet.repairs
    hooks = page.locator("#chart-webhooks rect.bar").evaluate_all(
        "bars => Object.fromEntries(bars.map(b => [b.dataset.series, Number(b.dataset.value)]))")
    assert hooks == {k: v for k, v in stats["webhooksByStatus"].items() if v}
    assert hooks["stale"] == 1
    assert hooks["applied"] >= 9
    used = page.locator("#chart-usage rect.bar").evaluate_all(
        "bars => bars.map(b => [b.dataset.series, Number(b.dataset.value)])")
    assert sum(v for _, v in used) == sum(
        d["credits"] for d in stats["creditsUsedByPlanPerDay"]) == fleet.used
    assert {series for series, _ in used} == {"Starter", "Pro", "Scale"}
    expect(page.locator("#chart-usage .legend")).to_have_text("StarterProScale")
    expect(page.locator("#tile-used")).to_have_text(f"{fleet.used:,}")
    expect(page.locator("#chart-repairs svg")).to_have_attribute(
        "aria-label", re.compile(r"^Repairs per day: \d+ repairs over 30 days; the most on "))
    shoot(page, "admin-overview", full_page=False)
    show = page.locator("#chart-usage").get_by_text("Show data")
    show.click()
    expect(page.locator("#chart-usage details tbody tr")).to_have_count(DAYS)
    assert_accessible(page)
    show.click()
    shoot(page, "admin")


def test_an_instances_holds_are_shown(page: Page, site: Site, fleet: Fleet) -> None:
    api = site.api
    instance = api.instance("holds")
    api.install(instance)
    reservations.reserve(api.engine, instance, 30, "render-1", now=api.now())
    sign_in(page, site)
    page.get_by_label("Instance id contains").fill(instance)
    page.get_by_role("button", name="Search").click()
    row = page.locator(f"tr[data-instance='{instance}']")
    expect(row.locator("td").nth(3)).to_have_text("70 left of 10030 held")
    page.get_by_role("button", name=instance).click()
    expect(page.locator("#detail-held")).to_have_text("30")
