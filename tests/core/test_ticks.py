"""Incremental ticks: each candidate set on its own, the full scan's `missed` count, the
loop's schedule, and the property that ticks alone give what full converges give."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from creditsync import (
    alerts,
    catalog,
    changes,
    convergence,
    inbox,
    instances,
    plans,
    policy,
    policy_store,
    runner,
    usage,
)
from creditsync.storage import database, models
from tests.core.helpers import DAY, HOUR, accept, count, hand_edit, instance
from tests.support import database as database_helpers
from tests.support import waiting
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

_runs = models.SYNC_RUNS


def provision(engine: Engine, *names: str, now: dt.datetime = T0) -> None:
    for name in names:
        instances.provision(engine, name, now=now)


def test_an_idle_tick_looks_at_nothing(engine: Engine) -> None:
    provision(engine, "a", "b")
    first = convergence.tick(engine, now=T0 + HOUR)
    assert (first.scanned, first.drifted, first.repaired) == (0, 0, 0)
    assert first.scope == "changed"
    assert first.candidates == {"queued": 0, "catalog": 0, "period_ended": 0, "expired": 0}
    with database.read(engine) as conn:
        row = conn.execute(sa.select(_runs).where(_runs.c.id == first.run_id)).one()
    assert (row.trigger, row.scope, row.scanned, row.missed) == ("tick", "changed", 0, None)


def test_a_tick_converges_a_subscription_accepted_outside_the_webhook_path(
        engine: Engine) -> None:
    provision(engine, "a", "b")
    assert accept(engine, "a", "PaidPlanPurchased", T0 + HOUR, "pro") == "applied"
    assert count(engine, models.CONVERGE_QUEUE) == 1  # queued with the write
    hand_edit(engine, "b", credits_total=7)  # not announced: no tick sees it
    summary = convergence.tick(engine, now=T0 + 2 * HOUR)
    assert summary.candidates["queued"] == 1
    assert (summary.scanned, summary.repaired) == (1, 1)
    assert (instance(engine, "a").plan_id, instance(engine, "a").credits_total) == ("pro", 5000)
    assert instance(engine, "b").credits_total == 7
    assert count(engine, models.CONVERGE_QUEUE) == 0
    assert convergence.tick(engine, now=T0 + 2 * HOUR).scanned == 0


def test_a_tick_converges_the_instances_of_a_changed_plan(engine: Engine) -> None:
    provision(engine, "free-1", "pro-1", "pro-2", "pro-later")
    for name in ("pro-1", "pro-2"):
        accept(engine, name, "PaidPlanPurchased", T0, "pro")
    convergence.tick(engine, now=T0 + HOUR)
    accept(engine, "pro-later", "PaidPlanPurchased", T0 + HOUR, "pro")
    with database.write(engine) as conn:  # queued, but let only the catalog announce it
        conn.execute(models.CONVERGE_QUEUE.delete())
    pro = catalog.require(engine).get("pro")
    assert pro is not None
    catalog.put(engine, dataclasses.replace(pro, monthly_credits=6000), T0 + HOUR)
    summary = convergence.tick(engine, now=T0 + 2 * HOUR)
    # on the plan (pro-1, pro-2), or named by a subscription (pro-later, still on free)
    assert summary.candidates["catalog"] == 3
    assert summary.repaired == 3
    assert [instance(engine, n).credits_total for n in ("pro-1", "pro-2", "pro-later")] == [
        6000, 6000, 6000]
    assert instance(engine, "free-1").credits_total == 100
    assert count(engine, models.CATALOG_CHANGES) == 0


def test_a_tick_resets_the_periods_that_ended(engine: Engine) -> None:
    provision(engine, "early")
    provision(engine, "late", now=T0 + 10 * DAY)
    usage.consume(engine, "early", 30, "k1", now=T0 + DAY)
    summary = convergence.tick(engine, now=T0 + 35 * DAY)
    assert summary.candidates["period_ended"] == 1
    row = instance(engine, "early")
    assert row.credits_used_month == 0
    assert row.period_end > T0 + 35 * DAY
    assert convergence.tick(engine, now=T0 + 35 * DAY).scanned == 0  # done: out of the range


def test_a_tick_downgrades_expiries_and_brings_them_back_with_more_grace(
        engine: Engine) -> None:
    provision(engine, "cancelled", "renewing")
    accept(engine, "cancelled", "PaidPlanAutoRenewalCancelled", T0, "pro", T0 + 3 * DAY)
    accept(engine, "renewing", "PaidPlanPurchased", T0, "pro")
    convergence.tick(engine, now=T0 + HOUR)
    assert instance(engine, "cancelled").plan_id == "pro"
    summary = convergence.tick(engine, now=T0 + 4 * DAY)
    assert summary.candidates["expired"] == 1
    assert instance(engine, "cancelled").plan_id == "free"
    assert convergence.tick(engine, now=T0 + 4 * DAY + HOUR).candidates["expired"] == 0
    # a grace period of two days: paid until T0 + 5 days again, so back on pro
    policy_store.store(engine, policy.Policy(expiry_grace_period=2 * DAY), "test",
                       T0 + 4 * DAY)
    back = convergence.tick(engine, now=T0 + 4 * DAY + 2 * HOUR)
    assert back.candidates["expired"] == 1
    assert instance(engine, "cancelled").plan_id == "pro"
    convergence.tick(engine, now=T0 + 5 * DAY + HOUR)
    assert instance(engine, "cancelled").plan_id == "free"
    assert instance(engine, "renewing").plan_id == "pro"


def test_a_grace_change_queues_the_expiries_between_its_two_cutoffs(engine: Engine) -> None:
    provision(engine, "cancelled")
    accept(engine, "cancelled", "PaidPlanAutoRenewalCancelled", T0, "pro", T0 + 3 * DAY)
    convergence.tick(engine, now=T0 + HOUR)  # the tick's cutoff: T0 + 1 h
    # a webhook converges it at once, expired (no grace yet)
    inbox.ingest(engine, inbox.Incoming("cancelled", "AppInstalled", T0 + 4 * DAY, None, None,
                                        {}), now=T0 + 4 * DAY)
    assert instance(engine, "cancelled").plan_id == "free"
    # two days of grace: paid again until T0 + 5 days; the tick's own range (its last
    # cutoff T0 + 1 h to T0 + 2 days 2 h) does not reach the expiry, the window queued does
    policy_store.store(engine, policy.Policy(expiry_grace_period=2 * DAY), "test",
                       T0 + 4 * DAY + HOUR)
    summary = convergence.tick(engine, now=T0 + 4 * DAY + 2 * HOUR)
    assert (summary.candidates["queued"], summary.candidates["expired"]) == (1, 0)
    assert instance(engine, "cancelled").plan_id == "pro"


def test_a_write_that_keeps_losing_its_race_is_queued_for_the_next_tick(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    provision(engine, "busy")
    accept(engine, "busy", "PaidPlanPurchased", T0, "pro")
    monkeypatch.setattr(convergence, "_apply", lambda *args: set())  # usage always wins
    summary = convergence.tick(engine, now=T0 + HOUR)
    assert summary.failed == 1
    assert count(engine, models.CONVERGE_QUEUE) == 1
    monkeypatch.undo()
    assert convergence.tick(engine, now=T0 + HOUR).repaired == 1
    assert instance(engine, "busy").plan_id == "pro"


def test_the_full_scan_counts_what_the_ticks_missed(engine: Engine) -> None:
    provision(engine, "a", "b", "c")
    accept(engine, "a", "PaidPlanPurchased", T0, "pro")  # announced
    hand_edit(engine, "b", credits_total=7)  # not announced
    summary = convergence.full_scan(engine, now=T0 + HOUR)
    assert (summary.scanned, summary.repaired, summary.missed) == (3, 2, 1)
    assert summary.trigger == "full_scan"
    assert summary.scope == "all"
    with database.read(engine) as conn:
        row = conn.execute(sa.select(_runs).where(_runs.c.id == summary.run_id)).one()
        assert changes.expiry_mark(conn) == T0 + HOUR
    assert (row.trigger, row.scope, row.scanned, row.repaired, row.missed) == (
        "full_scan", "all", 3, 2, 1)
    assert convergence.full_scan(engine, now=T0 + HOUR).missed == 0
    dry = convergence.full_scan(engine, now=T0 + 40 * DAY, dry_run=True)
    # every period ended: announced by the index, so none is missed, each counted once
    assert (dry.missed, dry.changed, dry.drifted) == (0, 3, 3)


def test_a_tick_reports_instances_on_a_plan_the_catalog_lost(engine: Engine) -> None:
    provision(engine, "a", "b")
    accept(engine, "a", "PaidPlanPurchased", T0, "pro")
    convergence.tick(engine, now=T0 + HOUR)
    catalog.remove(engine, "pro", T0 + HOUR)
    first = convergence.tick(engine, now=T0 + 2 * HOUR)
    later = convergence.tick(engine, now=T0 + 3 * HOUR)
    for summary in (first, later):
        assert (summary.plan_missing, summary.missing_plans) == (1, {"pro"})
    assert instance(engine, "a").credits_total == 5000  # never downgraded


def test_a_full_scan_that_missed_something_alerts_and_a_tick_alerts_no_drift() -> None:
    tick = convergence.Summary("r", "tick", False, T0, scanned=5, drifted=5, repaired=5,
                               scope="changed")
    assert alerts.for_run(tick) == []
    audit = convergence.Summary("r", "full_scan", False, T0, scanned=50, drifted=2,
                                repaired=2, missed=2)
    found = alerts.for_run(audit)
    assert [alert.key for alert in found] == ["drift", "missed"]
    assert found[1].title == "the full scan found 2 instances the ticks missed"
    clean = convergence.Summary("r", "full_scan", False, T0, scanned=50, missed=0)
    assert alerts.for_run(clean) == []


def test_the_loop_ticks_and_scans_in_full_on_its_own_interval(engine: Engine) -> None:
    provision(engine, "a")
    loop = runner.Runner(engine, dt.timedelta(seconds=0.2), retry_every=dt.timedelta(
        seconds=0.05), full_scan_interval=dt.timedelta(seconds=1.1))

    def runs() -> list[sa.Row[tuple[object, ...]]]:
        with database.read(engine) as conn:
            return list(conn.execute(sa.select(_runs.c.trigger, _runs.c.scope, _runs.c.missed,
                                               _runs.c.started_at)
                                     .where(_runs.c.finished_at.is_not(None))
                                     .order_by(_runs.c.started_at)).all())

    thread = loop.start()
    try:
        rows = waiting.wait_for("two full scans after the start-up run", lambda: (
            found := runs()) and [r.trigger for r in found].count("full_scan") >= 2 and found,
            timeout=20)
    finally:
        loop.stopping.set()
        thread.join(5)
    triggers = [row.trigger for row in rows]
    assert triggers[0] == "startup", triggers
    assert triggers.count("tick") >= 4, triggers
    scans = [row.started_at for row in rows if row.trigger != "tick"]
    assert all(gap >= dt.timedelta(seconds=1.1) for gap in
               (b - a for a, b in itertools.pairwise(scans))), scans
    assert {(row.scope, row.missed) for row in rows if row.trigger == "tick"} == {
        ("changed", None)}
    assert {row.missed for row in rows if row.trigger != "tick"} == {0}


# ---- the property: ticks alone give what full converges give ----------------------------

PAID = ["starter", "pro", "scale"]
NAMES = ["i0", "i1", "i2"]


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    at: int
    plan: str
    days: int


events = st.builds(Event, st.sampled_from(["PaidPlanPurchased", "PaidPlanChanged",
                                           "PaidPlanAutoRenewalCancelled", "AppRemoved",
                                           "AppInstalled"]),
                   st.integers(0, 60), st.sampled_from(PAID), st.integers(1, 20))
actions = st.lists(st.one_of(
    st.tuples(st.just("deliver"), st.sampled_from(NAMES), events),
    st.tuples(st.just("accept"), st.sampled_from(NAMES), events),
    st.tuples(st.just("advance"), st.just(""), st.integers(1, 24 * 20)),
    st.tuples(st.just("catalog"), st.sampled_from(PAID), st.integers(1, 9)),
    st.tuples(st.just("grace"), st.just(""), st.integers(0, 5)),
    st.tuples(st.just("consume"), st.sampled_from(NAMES), st.integers(1, 150)),
    st.tuples(st.just("converge"), st.just(""), st.just(0)),
), min_size=1, max_size=16)


@pytest.fixture(params=["sqlite", "postgres"])
def two_engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two fresh databases of one kind: one converged by ticks only, one by full converges."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with database_helpers.fresh_database(request, request.param, tmp_path / "a") as a, \
            database_helpers.fresh_database(request, request.param, tmp_path / "b") as b:
        engines = database.create(a), database.create(b)
        try:
            yield engines
        finally:
            for made in engines:
                made.dispose()


_ids = itertools.count()


def _apply(engine: Engine, action: tuple[str, str, object], prefix: str, now: dt.datetime,
           incremental: bool) -> None:
    kind, name, arg = action
    if kind in ("deliver", "accept"):
        assert isinstance(arg, Event)
        at = T0 + arg.at * HOUR
        plan = None if arg.kind in ("AppRemoved", "AppInstalled") else arg.plan
        expires = at + arg.days * DAY if arg.kind == "PaidPlanAutoRenewalCancelled" else None
        if kind == "deliver":  # the webhook path: converges at once
            inbox.ingest(engine, inbox.Incoming(
                prefix + name, arg.kind, at, plan, expires,
                {"expiresOn": expires.isoformat()} if expires else {}), now=now)
        else:  # accepted without converging: queued for the next tick
            accept(engine, prefix + name, arg.kind, at, plan, expires)
    elif kind == "catalog":
        assert isinstance(arg, int)
        found = catalog.require(engine).get(name)
        assert found is not None
        catalog.put(engine, dataclasses.replace(found, monthly_credits=arg * 1000), now)
    elif kind == "grace":
        assert isinstance(arg, int)
        policy_store.store(engine, policy.Policy(expiry_grace_period=arg * DAY), "test", now)
    elif kind == "consume":
        assert isinstance(arg, int)
        with contextlib.suppress(usage.InsufficientCredits):
            usage.consume(engine, prefix + name, arg, uuid.uuid4().hex, now=now)
    elif kind == "converge":
        if incremental:
            convergence.tick(engine, now=now)
        else:
            convergence.converge(engine, trigger="cli", actor="cli", now=now)


def _numbers(engine: Engine, prefix: str) -> list[tuple[object, ...]]:
    table = models.INSTANCES
    with database.read(engine) as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(table.c.instance_id, *(table.c[c] for c in models.NUMBER_COLUMNS.values()),
                      table.c.bonus_credits)
            .where(table.c.instance_id.like(prefix + "%")).order_by(table.c.instance_id))]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=actions)
def test_ticks_alone_give_what_full_converges_give(
        two_engines: tuple[Engine, Engine], steps: list[tuple[str, str, object]]) -> None:
    ticked, scanned = two_engines
    prefix = f"q{next(_ids)}-"
    note(f"steps: {steps!r}")
    for engine in two_engines:  # every example starts afresh (its clock starts at T0 again)
        with database.write(engine) as conn:
            for table in (models.LEDGER, models.USAGE_REQUESTS, models.WEBHOOK_EVENTS,
                          models.SUBSCRIPTIONS, models.INSTANCES, models.CONVERGE_QUEUE,
                          models.CATALOG_CHANGES, models.TICK_MARKS):
                conn.execute(table.delete())
        catalog.replace_all(engine, plans.DEFAULT_CATALOG, T0)
        policy_store.store(engine, policy.Policy(), "test", T0)
        for name in NAMES:
            instances.provision(engine, prefix + name, now=T0)
    now = T0
    for action in steps:
        if action[0] == "advance":
            assert isinstance(action[2], int)
            now += action[2] * HOUR
            continue
        _apply(ticked, action, prefix, now, incremental=True)
        _apply(scanned, action, prefix, now, incremental=False)
    convergence.tick(ticked, now=now)
    convergence.converge(scanned, trigger="cli", actor="cli", now=now)
    assert _numbers(ticked, prefix) == _numbers(scanned, prefix)
    audit = convergence.full_scan(ticked, now=now)
    assert (audit.missed, audit.repaired) == (0, 0), audit.line()
    assert_ledger_replays(ticked)
