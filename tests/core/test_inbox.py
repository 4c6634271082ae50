"""The inbox: stored before acknowledged, deduplicated, ordered, retried, quarantined."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import catalog, convergence, inbox, instances, plans
from creditsync.storage import database, models
from creditsync.usage import adjust_bonus, consume
from tests.core.helpers import DAY, HOUR, RESET, instance
from tests.support.times import T0

EVENTS = models.WEBHOOK_EVENTS


def event(kind: str, at: dt.datetime, product: str | None = "pro", instance_id: str = "w",
          expires: dt.datetime | None = None) -> inbox.Incoming:
    payload: dict[str, object] = {"eventType": kind, "instanceId": instance_id}
    if expires:
        payload["expiresOn"] = expires.isoformat()
    return inbox.Incoming(instance_id, kind, at, product, expires, payload)


def ingest(engine: Engine, incoming: inbox.Incoming, now: dt.datetime = T0) -> inbox.Receipt:
    return inbox.ingest(engine, incoming, now=now, pol=RESET)


def test_purchase_converges_before_the_answer(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    receipt = ingest(engine, event("PaidPlanPurchased", T0))
    assert receipt.status == "applied"
    assert (instance(engine, "w").plan_id, instance(engine, "w").credits_total) == ("pro", 5000)


def test_duplicate_and_stale_deliveries_change_nothing(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    first = ingest(engine, event("PaidPlanPurchased", T0 + HOUR))

    consume(engine, "w", 10, "k1", now=T0 + 2 * HOUR, pol=RESET)
    again = ingest(engine, event("PaidPlanPurchased", T0 + HOUR), now=T0 + 2 * DAY)
    older = ingest(engine, event("PaidPlanChanged", T0, "starter"), now=T0 + 2 * DAY)
    assert again == inbox.Receipt(first.event_id, "duplicate")
    assert older.status == "stale"
    row = instance(engine, "w")
    assert (row.plan_id, row.credits_total, row.credits_used_month) == ("pro", 5000, 10)
    assert inbox.counts(engine)["applied"] == 1


def test_unknown_event_types_are_ignored_and_unknown_products_quarantined(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    assert ingest(engine, event("SomethingNew", T0)).status == "ignored"
    quarantined = ingest(engine, event("PaidPlanPurchased", T0, "enterprise-yearly"))
    assert quarantined.status == "quarantined"
    assert inbox.retry_due(engine, now=T0 + HOUR, pol=RESET) == {}
    with database.write(engine) as conn:
        catalog.upsert(conn, plans.Plan("enterprise", 90000, ("enterprise-yearly",)), T0)
    assert inbox.retry_due(engine, now=T0 + HOUR, pol=RESET) == {"applied": 1}
    assert instance(engine, "w").credits_total == 90000


def test_a_failed_apply_stays_pending_and_is_retried_with_backoff(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    with database.write(engine) as conn:
        saved = catalog.read_plans(conn)
        conn.execute(models.PLANS.delete())  # the catalog is gone: apply fails
    receipt = ingest(engine, event("PaidPlanPurchased", T0))
    assert receipt.status == "pending"
    with database.read(engine) as conn:
        row = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == receipt.event_id)).one()
    assert (row.attempts, row.next_attempt_at) == (1, T0 + dt.timedelta(seconds=5))
    assert "plans table is empty" in row.last_error
    with database.write(engine) as conn:
        catalog.replace(conn, plans.Catalog(tuple(saved)), T0)
    assert inbox.retry_due(engine, now=T0 + dt.timedelta(seconds=1), pol=RESET) == {}
    assert inbox.retry_due(engine, now=T0 + dt.timedelta(seconds=6), pol=RESET) == {
        "applied": 1}
    assert instance(engine, "w").credits_total == 5000


def test_cancellation_keeps_paid_credits_until_expiry(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    ingest(engine, event("PaidPlanPurchased", T0))
    ingest(engine, event("PaidPlanAutoRenewalCancelled", T0 + HOUR, expires=T0 + DAY))
    assert instance(engine, "w").plan_id == "pro"

    convergence.converge(engine, trigger="timer", actor="timer", now=T0 + 2 * DAY)
    assert (instance(engine, "w").plan_id, instance(engine, "w").credits_total) == ("free", 100)


def test_removed_then_reinstalled_keeps_its_data(engine: Engine) -> None:
    ingest(engine, event("AppInstalled", T0, None))
    ingest(engine, event("PaidPlanPurchased", T0 + HOUR))

    adjust_bonus(engine, "w", 50, "goodwill", now=T0 + HOUR)
    ingest(engine, event("AppRemoved", T0 + 2 * HOUR, None))
    assert (instance(engine, "w").plan_id, instance(engine, "w").bonus_credits) == ("free", 50)
    ingest(engine, event("AppInstalled", T0 + 3 * HOUR, None))
    row = instance(engine, "w")
    assert (row.plan_id, row.bonus_credits) == ("free", 50)
    assert len(instances.history(engine, "w")) >= 4


def test_replay_refuses_applied_events(engine: Engine) -> None:
    instances.provision(engine, "w", now=T0, pol=RESET)
    receipt = ingest(engine, event("PaidPlanPurchased", T0))
    with pytest.raises(inbox.NotReplayable, match="is applied"):
        inbox.replay(engine, receipt.event_id, now=T0, pol=RESET)
