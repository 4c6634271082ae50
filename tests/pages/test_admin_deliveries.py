"""/admin's Deliveries view in Chromium against the real API on PostgreSQL: events to the
app with their status, a dead one replayed and then delivered to a verifying receiver."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from creditsync import delivery, outbox
from creditsync.storage import models
from tests.pages.checks import assert_accessible, shoot, spoken
from tests.pages.conftest import Site
from tests.pages.test_admin import sign_in
from tests.support.receiver import AppReceiver

pytestmark = pytest.mark.postgres

_o = models.OUTBOX


@dataclass(frozen=True)
class Events:
    failing: str  # its oldest event is dead, its next ones delivered
    fine: str  # every event delivered
    receiver: AppReceiver


@pytest.fixture(scope="module")
def events(site: Site) -> Events:
    api = site.api
    failing, fine = api.instance("failing"), api.instance("fine")
    for instance in (failing, fine):
        api.install(instance)
        for n, amount in enumerate((85, 11, 4)):  # credits.low 20%, 5%, credits.depleted
            answer = api.http.post("/api/credits/consume", headers=api.auth(instance),
                                   json={"amount": amount, "idempotencyKey": f"k{n}"})
            assert answer.status_code == 200, answer.text
    receiver = AppReceiver(failing={failing}).__enter__()
    client = delivery.Client(receiver.url, receiver.secret)
    try:
        for _ in range(outbox.MAX_ATTEMPTS):
            outbox.deliver_due(api.engine, client)
            # the backoff passes at once (rather than the clock jumping ahead)
            api.execute(_o.update().where(_o.c.status == "pending").values(
                next_attempt_at=dt.datetime.now(dt.UTC)))
        receiver.failing = set()
        outbox.deliver_due(api.engine, client)
    finally:
        client.close()
    return Events(failing, fine, receiver)


def test_deliveries_show_their_status_and_a_dead_one_is_replayed(
        page: Page, site: Site, events: Events) -> None:
    sign_in(page, site)
    page.get_by_role("link", name="Deliveries").click()
    expect(page.locator("#deliveries-body")).to_have_attribute("aria-busy", "false")
    expect(page.get_by_label("Delivery status")).to_contain_text("Dead (1)")
    expect(page.get_by_label("Delivery status")).to_contain_text("Delivered (5)")
    rows = page.locator("#deliveries-body tbody tr[data-delivery]")
    expect(rows).to_have_count(6)
    dead = page.locator("#deliveries-body tr[data-status='dead']")
    expect(dead).to_have_count(1)
    cells = spoken(dead)
    assert cells[1:5] == ["credits.low", events.failing, "dead", str(outbox.MAX_ATTEMPTS)]
    assert cells[5] == "HTTP 503 · gave up"
    assert_accessible(page)
    shoot(page, "admin-deliveries", part=page.locator("#deliveries"))

    page.get_by_label("Delivery status").select_option("dead")
    expect(rows).to_have_count(1)
    webhook_id = rows.first.get_attribute("data-delivery")
    page.get_by_role("button", name=f"Send credits.low for {events.failing} again").click()
    expect(page.locator("#deliveries-status")).to_have_text(
        f"credits.low for {events.failing} is queued again (webhook id {webhook_id}): it goes "
        "out next in its instance's line.")
    expect(page.locator("#deliveries-body")).to_contain_text("No dead events.")
    expect(page.get_by_label("Delivery status")).to_contain_text("Pending (1)")

    client = delivery.Client(events.receiver.url, events.receiver.secret)
    try:
        assert outbox.deliver_due(site.api.engine, client) == {
            "delivered": 1, "retry": 0, "dead": 0}
    finally:
        client.close()
    assert events.receiver.accepted[-1].webhook_id == webhook_id
    assert all(a.verified for a in events.receiver.attempts)
    page.get_by_label("Delivery status").select_option("")
    page.get_by_role("button", name="Check again").click()
    expect(page.get_by_label("Delivery status")).to_contain_text("Delivered (6)")
    events.receiver.__exit__(None, None, None)
