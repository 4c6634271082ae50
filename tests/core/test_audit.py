"""The audit heals a purchase whose webhook never came, on SQLite and PostgreSQL.

The marketplace is the stand-in (`tests/support/marketplace.py`, not Wix). Each test puts an
instance in a state the marketplace disagrees with and checks what the audit reports and
does: healed (with the usage policy of a missed purchase), free (no reset), an unknown
package (nobody downgraded, quarantined), errors (nothing changes), webhooks newer and
older than the observation, the order of the periodic audit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import (
    audit,
    catalog,
    clock,
    enums,
    inbox,
    instances,
    marketplace,
    marketplace_standin,
    plans,
    runner,
    usage,
)
from creditsync.storage import database, models
from tests.core.helpers import HOUR, instance
from tests.support import marketplace as stand

Action = enums.AuditAction


@pytest.fixture
def running() -> Iterator[marketplace_standin.Running]:
    with stand.serving() as found:
        yield found


@pytest.fixture
def client(running: marketplace_standin.Running) -> Iterator[marketplace.Client]:
    made = stand.client(running)
    yield made
    made.close()


def now() -> dt.datetime:
    return clock.utcnow()


def events(engine: Engine, instance_id: str) -> list[tuple[str, str]]:
    e = models.WEBHOOK_EVENTS
    with database.read(engine) as conn:
        return [(r.event_type, r.status) for r in conn.execute(
            sa.select(e.c.event_type, e.c.status).where(e.c.instance_id == instance_id)
            .order_by(e.c.received_at))]


def test_a_purchase_with_no_webhook_is_healed_by_the_audit(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    instances.provision(engine, "paid", now=now() - HOUR)
    usage.consume(engine, "paid", 30, "job", now=now() - HOUR)
    running.standin.set_paid("paid", "pro")
    dry = audit.run(engine, client, instance_ids=["paid"], dry_run=True)
    assert dry.as_json() == {"checked": 1, "disagreed": 1, "healed": 0, "errors": 0,
                             "disagreements": [{"instanceId": "paid", "ourPlan": "free",
                                                "marketplacePlan": "pro",
                                                "action": "would_heal"}]}
    assert not dry.ok
    assert instance(engine, "paid").plan_id == "free"  # a dry run changes nothing
    done = audit.run(engine, client, instance_ids=["paid"])
    assert (done.healed, done.ok, done.disagreements[0].action) == (1, True, Action.HEALED)
    row = instance(engine, "paid")
    # the missed purchase, applied as one: Reset (the default policy) starts a new period
    assert (row.plan_id, row.credits_total, row.credits_used_month) == ("pro", 5000, 0)
    assert events(engine, "paid") == [("MarketplaceSnapshot", "applied")]
    again = audit.run(engine, client, instance_ids=["paid"])
    assert (again.checked, again.disagreed, again.ok) == (1, 0, True)


def test_a_marketplace_that_says_free_moves_to_the_default_plan_without_a_reset(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    at = now() - 2 * HOUR
    inbox.ingest(engine, inbox.Incoming("lapsed", "PaidPlanPurchased", at, "pro", None, {}),
                 now=at)
    usage.consume(engine, "lapsed", 700, "job", now=at + HOUR)
    running.standin.set_free("lapsed")
    report = audit.run(engine, client, instance_ids=["lapsed"])
    assert report.disagreements == [audit.Disagreement("lapsed", "pro", "free", Action.HEALED)]
    row = instance(engine, "lapsed")
    assert (row.plan_id, row.credits_total, row.credits_used_month) == ("free", 100, 700)


def test_an_unknown_package_downgrades_nobody_and_is_quarantined(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    at = now() - HOUR
    inbox.ingest(engine, inbox.Incoming("big", "PaidPlanPurchased", at, "scale", None, {}),
                 now=at)
    running.standin.set_paid("big", "enterprise-yearly")
    report = audit.run(engine, client, instance_ids=["big"])
    assert report.disagreements == [
        audit.Disagreement("big", "scale", "enterprise-yearly", Action.QUARANTINED)]
    assert not report.ok
    assert (instance(engine, "big").plan_id, instance(engine, "big").credits_total) == (
        "scale", 25000)
    assert events(engine, "big")[-1] == ("MarketplaceSnapshot", "quarantined")
    with database.write(engine) as conn:  # the plan is added: the observation applies
        catalog.upsert(conn, plans.Plan("enterprise", 90000, ("enterprise-yearly",)), at)
    assert inbox.retry_due(engine, now=now()) == {"applied": 1}
    assert instance(engine, "big").credits_total == 90000


@pytest.mark.parametrize(("status", "retry_after"), [(429, 1.0), (500, None), (503, None)])
def test_marketplace_errors_change_nothing_and_are_reported(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
    status: int, retry_after: float | None,
) -> None:
    instances.provision(engine, "x", now=now())
    running.standin.set_paid("x", "pro")
    running.standin.fail_with(status, retry_after=retry_after)
    report = audit.run(engine, client, instance_ids=["x"])
    assert (report.checked, report.errors, report.ok) == (0, 1, False)
    assert str(status) in report.failures[0][1]
    assert instance(engine, "x").plan_id == "free"
    assert events(engine, "x") == []


def test_wrong_credentials_change_nothing_and_are_reported(
    engine: Engine, running: marketplace_standin.Running,
) -> None:
    instances.provision(engine, "x", now=now())
    running.standin.set_paid("x", "pro")
    wrong = stand.client(running, app_secret="another-secret")
    report = audit.run(engine, wrong, instance_ids=["x"])
    assert (report.errors, report.ok) == (1, False)
    assert "CREDITSYNC_APP_SECRET" in report.failures[0][1]
    assert instance(engine, "x").plan_id == "free"


def test_a_webhook_newer_than_the_observation_wins_an_older_one_is_stale(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    instances.provision(engine, "w", now=now() - 3 * HOUR)
    running.standin.set_paid("w", "pro")
    assert audit.run(engine, client, instance_ids=["w"]).healed == 1
    seen_at = now()
    older = inbox.ingest(engine, inbox.Incoming(
        "w", "PaidPlanChanged", seen_at - HOUR, "starter", None, {}), now=now())
    assert older.status == "stale"
    assert instance(engine, "w").plan_id == "pro"
    newer = inbox.ingest(engine, inbox.Incoming(
        "w", "PaidPlanChanged", seen_at + dt.timedelta(minutes=1), "scale", None, {}),
        now=now())
    assert newer.status == "applied"
    assert instance(engine, "w").plan_id == "scale"


def test_the_periodic_audit_walks_installed_instances_least_recently_checked_first(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    for name in ("a", "b", "c"):
        instances.provision(engine, name, now=now())
    removed = now()
    inbox.ingest(engine, inbox.Incoming("c", "AppRemoved", removed, None, None, {}), now=removed)
    running.standin.set_paid("b", "starter")
    assert audit.installed(engine, limit=10) == ["a", "b"]  # never checked; c uninstalled
    first = runner.guarded_audit(engine, client, dt.timedelta(hours=6), batch=1)
    assert first is not None
    assert (first.checked, first.disagreed) == (1, 0)  # "a", which agrees
    assert audit.installed(engine, limit=10) == ["b", "a"]
    second = runner.guarded_audit(engine, client, dt.timedelta(hours=6), batch=5)
    assert second is not None
    assert (second.checked, second.healed) == (1, 1)  # only "b" was due
    assert instance(engine, "b").plan_id == "starter"
    nothing = runner.guarded_audit(engine, client, dt.timedelta(hours=6), batch=5)
    assert nothing is not None
    assert nothing.checked == 0


def test_an_instance_the_marketplace_did_not_answer_for_is_asked_again_soon(
    engine: Engine, running: marketplace_standin.Running, client: marketplace.Client,
) -> None:
    """Not after a whole interval, and without blocking the line for the others."""
    six_hours = dt.timedelta(hours=6)
    for name in ("a", "b"):
        instances.provision(engine, name, now=now())
    running.standin.set_paid("a", "pro")
    running.standin.fail_with(503, times=1)  # the first request: "a"'s token
    failed = runner.guarded_audit(engine, client, six_hours, batch=1)
    assert failed is not None
    assert (failed.checked, failed.errors) == (0, 1)
    due = now() - six_hours
    assert audit.installed(engine, limit=10, checked_before=due,
                           retry_before=now() - audit.UNANSWERED_RETRY) == ["b"]
    later = now() + audit.UNANSWERED_RETRY + dt.timedelta(seconds=1)
    assert audit.installed(engine, limit=10, checked_before=due,
                           retry_before=later - audit.UNANSWERED_RETRY) == ["b", "a"]
    report = audit.run(engine, client, limit=5, checked_before=due, now=lambda: later)
    assert (report.checked, report.healed) == (2, 1)
    assert instance(engine, "a").plan_id == "pro"
