"""The engine on SQLite and PostgreSQL: what converge() repairs, records and leaves alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import catalog, compat, convergence, drift, instances, plans, policy, usage
from creditsync.storage import database, models
from tests.core.helpers import DAY, HOUR, RESET, accept, count, hand_edit, instance
from tests.support.database import new_pg_database
from tests.support.ledger import assert_ledger_replays
from tests.support.postgres import PostgresCluster
from tests.support.times import T0

LEDGER = models.LEDGER
RUNS = models.SYNC_RUNS


def converge(engine: Engine, now: object = None, **kw: object) -> convergence.Summary:
    return convergence.converge(engine, trigger="timer", actor="timer",
                                now=now or T0 + HOUR, **kw)  # type: ignore[arg-type]


def test_paid_instance_stuck_on_free_is_repaired_once(engine: Engine) -> None:
    instances.provision(engine, "a", now=T0, pol=RESET)
    accept(engine, "a", "PaidPlanPurchased", T0, "pro")
    converge(engine)
    hand_edit(engine, "a", plan_id="free", credits_total=100, credits_used_month=30)

    first = converge(engine)
    row = instance(engine, "a")
    assert (row.plan_id, row.credits_total, row.credits_used_month) == ("pro", 5000, 30)
    assert (first.drifted, first.repaired, first.failed) == (1, 1, 0)
    assert first.changes[0].kinds == "drift_repair"
    second = converge(engine)
    assert (second.drifted, second.repaired) == (0, 0)
    assert list(drift.scan(engine, now=T0 + HOUR)) == []


def test_purchase_before_install_gives_paid_credits_at_provisioning(engine: Engine) -> None:
    accept(engine, "early", "PaidPlanPurchased", T0 - DAY, "scale")
    summary = instances.provision(engine, "early", now=T0, pol=RESET)
    row = instance(engine, "early")
    assert (row.plan_id, row.credits_total, row.applied_rev) == ("scale", 25000, 1)
    assert summary.changes[0].kinds == "plan_change"
    assert_ledger_replays(engine)


def test_reset_policy_restarts_usage_at_the_event_and_preserve_keeps_it(engine: Engine) -> None:
    for name in ("r", "p"):
        instances.provision(engine, name, now=T0, pol=RESET)
        hand_edit(engine, name, credits_used_month=60, version=1)
        accept(engine, name, "PaidPlanPurchased", T0 + HOUR, "starter")
    convergence.converge(engine, trigger="webhook", actor="webhook", instance_ids=["r"],
                         now=T0 + 2 * HOUR, pol=RESET)
    convergence.converge(engine, trigger="webhook", actor="webhook", instance_ids=["p"],
                         now=T0 + 2 * HOUR, pol=policy.Policy("Preserve"))
    reset, kept = instance(engine, "r"), instance(engine, "p")
    assert (reset.credits_total, reset.credits_used_month, reset.period_start) == (
        1000, 0, T0 + HOUR)
    assert (kept.credits_total, kept.credits_used_month, kept.period_start) == (1000, 60, T0)


def test_catalog_change_moves_every_instance_on_the_plan(engine: Engine) -> None:
    for n in range(5):
        instances.provision(engine, f"pro-{n}", now=T0, pol=RESET)
        accept(engine, f"pro-{n}", "PaidPlanPurchased", T0, "pro")
    instances.provision(engine, "free-0", now=T0, pol=RESET)
    converge(engine)
    with database.write(engine) as conn:
        catalog.upsert(conn, plans.Plan("pro", 6000, display_name="Pro"), T0)
    summary = converge(engine)
    assert summary.repaired == 5
    assert {instance(engine, f"pro-{n}").credits_total for n in range(5)} == {6000}
    assert instance(engine, "free-0").credits_total == 100
    assert_ledger_replays(engine)


def test_deleted_plan_never_downgrades_its_users(engine: Engine) -> None:
    instances.provision(engine, "payer", now=T0, pol=RESET)
    accept(engine, "payer", "PaidPlanPurchased", T0, "pro")
    converge(engine)
    with database.write(engine) as conn:
        catalog.delete(conn, "pro", T0)
    summary = converge(engine)
    row = instance(engine, "payer")
    assert (row.plan_id, row.credits_total) == ("pro", 5000)
    assert (summary.plan_missing, summary.repaired, summary.missing_plans) == (1, 0, {"pro"})
    [found] = drift.scan(engine, now=T0 + HOUR)
    assert (found.instance_id, found.reason, found.desired_credits_total) == (
        "payer", "plan_missing", None)


def test_expiry_honours_the_grace_period(engine: Engine) -> None:
    instances.provision(engine, "c", now=T0, pol=RESET)
    accept(engine, "c", "PaidPlanPurchased", T0, "pro")
    accept(engine, "c", "PaidPlanAutoRenewalCancelled", T0 + HOUR, "pro", T0 + DAY)
    converge(engine, now=T0 + 2 * HOUR)
    assert instance(engine, "c").plan_id == "pro"  # paid until it expires
    graced = policy.Policy("Reset", 2 * DAY)
    assert converge(engine, now=T0 + 2 * DAY, pol=graced).repaired == 0
    summary = converge(engine, now=T0 + 3 * DAY + HOUR, pol=graced)
    assert summary.changes[0].kinds == "expiry"
    assert (instance(engine, "c").plan_id, instance(engine, "c").credits_total) == ("free", 100)


def test_monthly_reset_advances_the_period(engine: Engine) -> None:
    instances.provision(engine, "m", now=T0, pol=RESET)
    hand_edit(engine, "m", credits_used_month=90)
    summary = converge(engine, now=T0 + 32 * DAY)
    row = instance(engine, "m")
    assert summary.changes[0].kinds == "period_reset"
    assert (row.credits_used_month, row.period_start) == (0, policy.add_months(T0, 1))
    assert_ledger_replays(engine, chain=False)


def test_dry_run_writes_nothing(engine: Engine) -> None:
    instances.provision(engine, "d", now=T0, pol=RESET)
    hand_edit(engine, "d", credits_total=1)
    ledger_rows, runs = count(engine, LEDGER), count(engine, RUNS)
    summary = converge(engine, dry_run=True)
    assert (summary.drifted, summary.repaired) == (1, 1)
    assert summary.changes[0].after.credits_total == 100
    assert instance(engine, "d").credits_total == 1
    assert (count(engine, LEDGER), count(engine, RUNS)) == (ledger_rows, runs)


def test_runs_are_recorded_and_batches_cover_everything(engine: Engine) -> None:
    for n in range(50):
        instances.provision(engine, f"i{n:02d}", now=T0, pol=RESET)
    for n in range(0, 50, 5):
        hand_edit(engine, f"i{n:02d}", credits_total=0)
    seen: list[int] = []
    summary = converge(engine, batch_size=3, progress=seen.append)
    assert (summary.scanned, summary.drifted, summary.repaired) == (50, 10, 10)
    assert sum(seen) == 10
    with database.read(engine) as conn:
        run = conn.execute(sa.select(RUNS).where(RUNS.c.id == summary.run_id)).one()
    assert (run.trigger, run.scope, run.scanned, run.drifted, run.repaired, run.failed) == (
        "timer", "all", 50, 10, 10, 0)
    assert run.finished_at is not None
    assert run.error is None
    assert_ledger_replays(engine, chain=False)


def test_ledger_rows_say_who_when_and_why(engine: Engine) -> None:
    instances.provision(engine, "l", now=T0, pol=RESET)
    hand_edit(engine, "l", credits_total=7)
    summary = convergence.converge(engine, trigger="manual", actor="manual",
                                   instance_ids=["l"], now=T0 + HOUR)
    history = instances.history(engine, "l")
    assert [(h.kind, h.actor) for h in history] == [
        ("drift_repair", "manual"), ("provision", "provision")]
    latest = history[0]
    assert (latest.credits_total_before, latest.credits_total_after) == (7, 100)
    assert latest.correlation_id == summary.run_id
    assert latest.reason == "credits_total 7, plan free pays 100"


def test_original_entry_points_wrap_the_engine(engine: Engine) -> None:
    instances.provision(engine, "o", now=T0, pol=RESET)
    assert compat.update_instance_plan(engine, "o", "pro", T0 + HOUR) == "applied"
    assert instance(engine, "o").credits_total == 5000
    assert compat.update_instance_plan(engine, "o", "starter", T0) == "stale"
    hand_edit(engine, "o", credits_total=100)
    assert compat.sync_instance_credits(engine, "o").repaired == 1
    hand_edit(engine, "o", credits_total=100)
    assert compat.sync_all_instance_credits(engine) == 1
    assert instance(engine, "o").credits_total == 5000


def test_credits_view_reports_sync_state_without_repairing(engine: Engine) -> None:
    instances.provision(engine, "v", now=T0, pol=RESET)
    hand_edit(engine, "v", credits_total=3)
    view = instances.credits(engine, "v", now=T0 + HOUR, pol=RESET)
    assert dataclasses.astuple(view)[:6] == ("v", "free", 3, 0, 0, 3)
    assert view.in_sync is False
    assert instance(engine, "v").credits_total == 3


@pytest.fixture
def pg_engine(pg: PostgresCluster) -> Iterator[Engine]:
    """A fresh PostgreSQL database: where a full converge reads a batch and writes it in
    two transactions (the next batch is read meanwhile)."""
    engine = database.create(pg.url(new_pg_database(pg)))
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_spend_between_a_batchs_read_and_its_write_is_kept(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance spent from between its batch's read and its write loses its version
    race, is read again and repaired, and the spend is kept."""
    engine = pg_engine
    for name in ("a", "b"):
        instances.provision(engine, name, now=T0, pol=RESET)
        hand_edit(engine, name, credits_total=7)
    read = drift.drifted_batch
    spent: list[str] = []

    def read_then_spend(*args: Any) -> list[drift.Candidate]:
        rows = read(*args)
        if not spent:
            spent.append("a")  # another transaction, after the batch was read
            usage.consume(engine, "a", 5, "between", now=T0 + HOUR, pol=RESET)
        return rows

    monkeypatch.setattr(drift, "drifted_batch", read_then_spend)
    summary = convergence.converge(engine, trigger="timer", actor="timer", now=T0 + HOUR,
                                   pol=RESET)
    assert (summary.scanned, summary.repaired, summary.failed) == (2, 2, 0)
    row = instance(engine, "a")
    assert (row.credits_total, row.credits_used_month) == (100, 5)
    assert instance(engine, "b").credits_total == 100
    ledger = models.LEDGER
    with database.read(engine) as conn:  # the repair was decided on the numbers after it
        repair = conn.execute(sa.select(ledger).where(
            ledger.c.instance_id == "a", ledger.c.kind == "drift_repair")).one()
    assert (repair.credits_used_before, repair.credits_used_after) == (5, 5)


def test_a_batch_writer_skips_what_changed_since_it_was_read(engine: Engine) -> None:
    """The batch writers themselves (SQLite's, PostgreSQL's) apply only the changes whose
    instance still has the version read: the others lost their race."""
    for name in ("a", "b"):
        instances.provision(engine, name, now=T0, pol=RESET)
        hand_edit(engine, name, credits_total=7)
    with database.read(engine) as conn:
        rows = drift.drifted_batch(conn, catalog.load(conn), T0 + HOUR, RESET, ["a", "b"])
    planned = [policy.Change(row.instance_id, tuple(policy.transition(
        row.actual, row.desired, T0 + HOUR, RESET))) for row in rows]
    usage.consume(engine, "a", 5, "meanwhile", now=T0 + HOUR, pol=RESET)
    with database.write(engine) as conn:
        applied = convergence._apply(conn, planned, rows, T0 + HOUR, "timer", "test")
    assert applied == {"b"}
    assert (instance(engine, "a").credits_total, instance(engine, "a").credits_used_month) == (
        7, 5)
    assert instance(engine, "b").credits_total == 100
