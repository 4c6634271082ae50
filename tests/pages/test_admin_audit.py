"""/admin's Audit view in Chromium against the real API on PostgreSQL and the marketplace's
STAND-IN (not Wix): the last audit, disagreements per day, the instances the marketplace did
not answer for, and an audit run (dry run first, then apply); the source turned off."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from creditsync import audit, marketplace
from tests.api.conftest import ms
from tests.pages.checks import assert_accessible, shoot, spoken
from tests.pages.conftest import Console, Marketplace, Site

pytestmark = pytest.mark.postgres

DAYS = 10  # days of past audits behind the chart
UNANSWERED_503 = "The marketplace answered GET /apps/v1/instance with 503"


@dataclass(frozen=True)
class History:
    healed: int  # disagreements healed by the past days' audits
    unhealed: int  # found but not healed (a package no plan names: quarantined)


@pytest.fixture(scope="module")
def history(marketplace: Marketplace) -> History:
    """Audits on the past DAYS days, made by the core's own audit on a clock set back day by
    day: each day some instances whose purchase never came as a webhook (healed), some that
    agree, now and then one paying for a package the catalog does not know (quarantined)."""
    api, standin = marketplace.site.api, marketplace.standin
    today = api.now().replace(hour=0, minute=0, second=0, microsecond=0)
    healed = unhealed = 0
    for back in range(DAYS, 0, -1):
        day = today - dt.timedelta(days=back) + dt.timedelta(hours=6)
        ids = []
        for n in range(back * 7 % 4 + 1):
            instance = api.instance(f"past-{back}-{n}")
            api.send("AppInstalled", instance, at=ms(day - dt.timedelta(hours=2)))
            if n:  # the first one agrees: it is free, and the stand-in says so
                standin.set_paid(instance, ("starter", "pro", "scale")[n % 3])
            ids.append(instance)
        if back % 4 == 1:
            odd = api.instance(f"past-{back}-odd")
            api.send("AppInstalled", odd, at=ms(day - dt.timedelta(hours=2)))
            standin.set_paid(odd, "legacy-gold")
            ids.append(odd)
        client = marketplace_client(marketplace, lambda day=day: day)
        try:
            report = audit.run(api.engine, client, instance_ids=ids, now=lambda day=day: day)
        finally:
            client.close()
        assert (report.checked, report.errors) == (len(ids), 0), report
        healed += report.healed
        unhealed += report.disagreed - report.healed
    assert healed > 0
    assert unhealed > 0
    return History(healed, unhealed)


def marketplace_client(found: Marketplace, now: Any) -> marketplace.Client:
    return marketplace.Client(found.url, found.standin.app_id, found.standin.app_secret,
                              rate=1000, now=now)


def missed_purchase(found: Marketplace, name: str, plan: str) -> str:
    """The original bug's worst case: installed, paid for `plan`, and the purchase webhook
    never came; only the marketplace knows."""
    instance = found.site.api.instance(name)
    found.site.api.install(instance)
    found.standin.set_paid(instance, plan)
    return instance


def sign_in(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/admin")
    page.get_by_label("Admin token").fill(site.api.keys.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_focused()
    page.get_by_role("link", name="Audit").click()
    expect(page.locator("#audit")).to_have_attribute("aria-busy", "false")


def audit_stats(site: Site) -> dict[str, Any]:
    response = site.api.http.get("/api/admin/stats", headers=site.api.admin)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["audit"]
    return found


def chart(page: Page) -> dict[str, int]:
    """The audit chart's bars, summed per series."""
    bars: list[list[Any]] = page.locator("#chart-audit rect.bar").evaluate_all(
        "bars => bars.map(b => [b.dataset.series, Number(b.dataset.value)])")
    sums: dict[str, int] = {}
    for series, value in bars:
        sums[series] = sums.get(series, 0) + value
    return sums


def expect_tiles(page: Page, counts: list[str]) -> None:
    """The last audit's checked, disagreed, healed and errors, once the view has reloaded."""
    expect(page.locator("#audit")).to_have_attribute("aria-busy", "false")
    for name, count in zip(("checked", "disagreed", "healed", "errors"), counts, strict=True):
        expect(page.locator(f"#audit-{name}")).to_have_text(count)


def preview(page: Page, *instances: str) -> None:
    page.get_by_label("Instance ids", exact=True).fill("\n".join(instances))
    page.get_by_role("button", name="Preview (dry run)").click()


def test_a_purchase_whose_webhook_never_came_is_previewed_then_healed(
        page: Page, marketplace: Marketplace, history: History) -> None:
    site = marketplace.site
    api = site.api
    missed = missed_purchase(marketplace, "missed", "pro")
    paying = api.instance("paying")
    api.install(paying)
    api.buy(paying, "pro", ms(api.now() - dt.timedelta(hours=1)))
    marketplace.standin.set_paid(paying, "pro")  # agrees with the webhook it sent
    free = api.instance("free")
    api.install(free)  # the stand-in says free: agrees
    assert api.credits(missed)["creditsTotal"] == 100

    sign_in(page, site)
    assert chart(page) == {"Healed": history.healed, "Not healed": history.unhealed}
    expect(page.locator("#chart-audit .legend")).to_have_text("HealedNot healed")
    expect(page.locator("#chart-audit svg")).to_have_attribute("aria-label", re.compile(
        rf"^Disagreements per day: {history.healed + history.unhealed} disagreements over 30 "
        "days; the most on "))

    preview(page, missed, paying, free)
    expect(page.locator("#audit-status")).to_have_text(
        "Dry run: the marketplace disagrees on 1 instance (3 instances checked). Nothing was "
        "written yet.")
    rows = page.locator("#audit-diff tbody tr")
    expect(rows).to_have_count(1)
    assert spoken(rows.first) == [
        missed, "Free", "Pro", "Would heal",
        "Applying stores what the marketplace says and applies it like the webhook that never "
        "came."]
    assert api.credits(missed)["creditsTotal"] == 100  # a dry run writes nothing
    assert [row.event_type for row in api.inbox(missed)] == ["AppInstalled"]
    before = audit_stats(site)
    shoot(page, "admin-audit-preview", part=page.locator("#audit-run"))

    page.get_by_role("button", name="Apply to 1 instance").click()
    expect(page.locator("#audit-status")).to_have_text(
        "Applied: 1 instance healed (3 instances checked).")
    expect(rows).to_have_count(1)
    assert spoken(rows.first)[3:] == [
        "Healed", "Applied like the webhook that never came; the instance converged."]
    expect(page.locator("#audit-preview")).to_be_focused()
    credits = api.credits(missed)
    assert (credits["plan"], credits["creditsTotal"]) == ("pro", 5000)
    snapshot = api.inbox(missed)[-1]
    assert (snapshot.event_type, snapshot.status) == ("MarketplaceSnapshot", "applied")

    # the last audit and the chart show it
    expect(page.locator("#audit-when")).to_have_text(re.compile(r"now|seconds? ago"))
    expect_tiles(page, ["3", "1", "1", "0"])
    after = audit_stats(site)
    assert after["last"] == {"day": after["last"]["day"], "checked": 3, "disagreed": 1,
                             "healed": 1, "errors": 0}
    expect(page.locator("#chart-audit rect.bar[data-series='Healed']")).not_to_have_count(0)
    assert chart(page) == {"Healed": history.healed + 1, "Not healed": history.unhealed}
    assert sum(d["healed"] for d in after["perDay"]) == sum(
        d["healed"] for d in before["perDay"]) + 1

    # the same dry run now finds them all in agreement
    preview(page, missed, paying, free)
    expect(page.locator("#audit-status")).to_have_text(
        "The marketplace agrees: 3 instances checked, nothing to heal.")
    expect(rows).to_have_count(0)


def test_an_instance_the_marketplace_could_not_answer_for_is_listed_then_asked_again(
        page: Page, marketplace: Marketplace, history: History) -> None:
    site = marketplace.site
    standin = marketplace.standin
    flaky = missed_purchase(marketplace, "flaky", "scale")
    sign_in(page, site)
    expect(page.locator("#audit-unanswered-summary")).to_have_text(
        "The marketplace answered for every instance it was asked about.")

    preview(page, flaky)
    expect(page.locator("#audit-status")).to_have_text(re.compile("^Dry run: the marketplace"))
    standin.fail_with(503)  # the marketplace goes down between the preview and the apply
    try:
        page.get_by_role("button", name="Apply to 1 instance").click()
        expect(page.locator("#audit-alert")).to_have_text(
            "Applied: 0 instances healed (0 instances checked); the marketplace could not "
            "answer for 1 instance.")
        expect(page.locator("#audit-diff")).to_be_empty()
        assert site.api.credits(flaky)["creditsTotal"] == 100  # nothing changed
        expect_tiles(page, ["0", "0", "0", "1"])
        expect(page.locator("#audit-unanswered-summary")).to_have_text(
            "The marketplace could not answer for 1 instance when last asked; nothing was "
            "changed for them, and the audit asks again soon.")
        row = page.locator("#audit-unanswered tbody tr")
        expect(row).to_have_count(1)
        # asked (and not answered) just now: the periodic audit asks again in ten minutes
        cells = spoken(row)
        assert (cells[0], cells[2]) == (flaky, UNANSWERED_503)
        assert cells[1] != "never"
        unanswered = audit_stats(site)["unanswered"]
        assert [(u["instanceId"], u["error"]) for u in unanswered] == [
            (flaky, "the marketplace answered GET /apps/v1/instance with 503")]
        assert unanswered[0]["checkedAt"] is not None

        # while it is still down, a dry run says so and writes nothing
        page.get_by_role("button", name=f"Ask again about {flaky}").click()
        expect(page.locator("#audit-alert")).to_have_text(
            "The marketplace could not answer for 1 instance. Nothing was written.")
    finally:
        standin.heal()

    # back up: asked again, the dry run shows the missed purchase, with the list still there
    page.get_by_role("button", name=f"Ask again about {flaky}").click()
    expect(page.locator("#audit-status")).to_have_text(
        "Dry run: the marketplace disagrees on 1 instance (1 instance checked). Nothing was "
        "written yet.")
    expect(page.get_by_label("Instance ids", exact=True)).to_have_value(flaky)
    assert spoken(page.locator("#audit-diff tbody tr").first)[:4] == [
        flaky, "Free", "Scale", "Would heal"]
    shoot(page, "admin-audit", part=page.locator("#audit"))
    shoot(page, "admin-audit-run", part=page.locator("#audit-run"))

    page.get_by_role("button", name="Apply to 1 instance").click()
    expect(page.locator("#audit-status")).to_have_text(
        "Applied: 1 instance healed (1 instance checked).")
    expect(page.locator("#audit-unanswered tbody tr")).to_have_count(0)
    expect(page.locator("#audit-unanswered-summary")).to_have_text(
        "The marketplace answered for every instance it was asked about.")
    credits = site.api.credits(flaky)
    assert (credits["plan"], credits["creditsTotal"]) == ("scale", 25000)
    expect_tiles(page, ["1", "1", "1", "0"])
    assert chart(page)["Healed"] == sum(d["healed"] for d in audit_stats(site)["perDay"])


def test_every_installed_instance_can_be_audited(
        page: Page, marketplace: Marketplace, history: History) -> None:
    site = marketplace.site
    missed = missed_purchase(marketplace, "everyone", "starter")
    sign_in(page, site)
    page.locator("#audit-run").get_by_label("Every instance").check()
    expect(page.get_by_label("Instance ids", exact=True)).to_be_disabled()
    page.get_by_role("button", name="Preview (dry run)").click()
    expect(page.locator("#audit-status")).to_have_text(re.compile(
        r"^Dry run: the marketplace disagrees on \d+ instances \(\d+ instances checked\)\."))
    actions = {row[0]: row[3] for row in (
        spoken(r) for r in page.locator("#audit-diff tbody tr").all())}
    assert actions[missed] == "Would heal"
    assert "Quarantined" in actions.values()  # the unknown packages of the past days
    assert_accessible(page)

    page.get_by_role("button", name="Discard").click()
    expect(page.locator("#audit-status")).to_have_text("Preview discarded: nothing was changed.")
    expect(page.locator("#audit-diff")).to_be_empty()
    assert site.api.credits(missed)["creditsTotal"] == 100


def test_listing_no_instance_says_what_to_do(page: Page, marketplace: Marketplace) -> None:
    sign_in(page, marketplace.site)
    page.get_by_role("button", name="Preview (dry run)").click()
    expect(page.locator("#audit-alert")).to_have_text(
        "List the instance ids to ask about, or choose Every instance.")
    expect(page.get_by_label("Instance ids", exact=True)).to_be_focused()
    expect(page.get_by_label("Instance ids", exact=True)).to_have_attribute("aria-invalid", "true")


def test_with_the_marketplace_source_off_the_view_says_which_variable_turns_it_on(
        page: Page, site: Site, console: Console) -> None:
    sign_in(page, site)  # the module's first server: CREDITSYNC_WIX_APP_ID unset
    console.expect_failure("/api/admin/audit", 409)
    page.locator("#audit-run").get_by_label("Every instance").check()
    page.get_by_role("button", name="Preview (dry run)").click()
    expect(page.locator("#audit-alert")).to_have_text(
        "The marketplace source is off, so there is nobody to ask. Set CREDITSYNC_WIX_APP_ID "
        "(the app's id at the marketplace, with CREDITSYNC_APP_SECRET as its secret) where "
        "creditsync runs, restart it, and audit again.")
    expect(page.locator("#audit-diff")).to_be_empty()
    shoot(page, "admin-audit-off", part=page.locator("#audit-run"))
