"""Desired state that can be trusted: races between events, starved retries, the guard.

Two purchases for one instance released at the same moment from two connections must
end on the newer one, on both inbox paths (the blocking one and the async one on
PostgreSQL); a backlog of quarantined events must never keep a pending one waiting; the
subscription write itself refuses to go backwards in `source_time`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import inbox, instances, subscription_store, subscriptions
from creditsync.storage import database, inbox_pg, models
from tests.core.helpers import HOUR, instance
from tests.support.database import fresh_database
from tests.support.times import T0

INSTANCES = 50
NEWER, OLDER = ("pro", T0), ("starter", T0 - HOUR)


@pytest.fixture
def pg_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """PostgreSQL only: the async path exists there alone."""
    with fresh_database(request, "postgres", tmp_path) as url:
        engine = database.create(url)
        try:
            yield engine
        finally:
            engine.dispose()


def purchase(instance_id: str, product: str, at: dt.datetime) -> inbox.Incoming:
    return inbox.Incoming(instance_id, "PaidPlanPurchased", at, product, None,
                          {"vendorProductId": product})


def provision_many(engine: Engine, prefix: str) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(INSTANCES)]
    for instance_id in ids:
        instances.provision(engine, instance_id, now=T0 - 2 * HOUR)
    return ids


def check_outcomes(engine: Engine, results: dict[str, dict[str, str]]) -> None:
    """The newer purchase wins every time, and every answer agrees with the ledger."""
    ledger = models.LEDGER
    for instance_id, answers in results.items():
        row = instance(engine, instance_id)
        assert (row.plan_id, row.credits_total) == ("pro", 5000), (instance_id, answers)
        assert answers["pro"] == "applied", (instance_id, answers)
        with database.read(engine) as conn:
            plans_applied = conn.execute(
                sa.select(ledger.c.plan_after).where(
                    ledger.c.instance_id == instance_id, ledger.c.kind == "plan_change")
                .order_by(ledger.c.id)).scalars().all()
        if answers["starter"] == "stale":  # decided after the newer one: never applied
            assert plans_applied == ["pro"], (instance_id, answers, plans_applied)
        else:  # decided first, then overridden by the newer one
            assert answers["starter"] == "applied", (instance_id, answers)
            assert plans_applied == ["starter", "pro"], (instance_id, answers, plans_applied)


@pytest.mark.parametrize("first", ["newer", "older"])
def test_the_newest_purchase_wins_a_race_on_the_blocking_path(
    engine: Engine, first: str
) -> None:
    ids = provision_many(engine, f"blocking-{first}")
    order = [NEWER, OLDER] if first == "newer" else [OLDER, NEWER]
    results: dict[str, dict[str, str]] = {}
    with ThreadPoolExecutor(2) as pool:
        for instance_id in ids:
            gate = threading.Barrier(2)

            def send(event: tuple[str, dt.datetime], iid: str = instance_id,
                     gate: threading.Barrier = gate) -> tuple[str, str]:
                incoming = purchase(iid, *event)
                gate.wait()  # both released at once, each on its own connection
                return event[0], inbox.ingest(engine, incoming, now=T0).status

            answers = list(pool.map(send, order))
            results[instance_id] = dict(answers)
    check_outcomes(engine, results)


@pytest.mark.postgres
@pytest.mark.parametrize("first", ["newer", "older"])
def test_the_newest_purchase_wins_a_race_on_the_async_path(
    pg_engine: Engine, first: str
) -> None:
    engine = pg_engine
    ids = provision_many(engine, f"async-{first}")
    order = [NEWER, OLDER] if first == "newer" else [OLDER, NEWER]

    async def race() -> dict[str, dict[str, str]]:
        pool = inbox_pg.pool(engine.url.render_as_string(hide_password=False), size=2)
        await pool.open(wait=True)
        try:
            out: dict[str, dict[str, str]] = {}
            for instance_id in ids:
                receipts = await asyncio.gather(*(
                    inbox_pg.ingest(pool, purchase(instance_id, *event), now=T0)
                    for event in order))
                out[instance_id] = {event[0]: receipt.status
                                    for event, receipt in zip(order, receipts, strict=True)}
            return out
        finally:
            await pool.close()

    check_outcomes(engine, asyncio.run(race()))


@pytest.mark.postgres
def test_both_paths_race_each_other(pg_engine: Engine) -> None:
    """One purchase through the blocking path, the other through the async one."""
    engine = pg_engine
    ids = provision_many(engine, "mixed")
    results: dict[str, dict[str, str]] = {}

    async def via_async(instance_id: str, gate: threading.Barrier) -> str:
        pool = inbox_pg.pool(engine.url.render_as_string(hide_password=False), size=1)
        await pool.open(wait=True)
        try:
            incoming = purchase(instance_id, *OLDER)
            gate.wait()
            return (await inbox_pg.ingest(pool, incoming, now=T0)).status
        finally:
            await pool.close()

    for instance_id in ids:
        gate = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            older = pool.submit(lambda iid=instance_id, g=gate: asyncio.run(via_async(iid, g)))
            newer = pool.submit(_blocking_after(gate, engine, purchase(instance_id, *NEWER)))
            results[instance_id] = {"pro": newer.result(), "starter": older.result()}
    check_outcomes(engine, results)


def _blocking_after(
    gate: threading.Barrier, engine: Engine, incoming: inbox.Incoming
) -> Callable[[], str]:
    def run() -> str:
        gate.wait()
        return inbox.ingest(engine, incoming, now=T0).status
    return run


def test_the_subscription_write_refuses_to_go_backwards(engine: Engine) -> None:
    newer = subscriptions.State("pro", "active", None, 1, T0)
    older = subscriptions.State("starter", "active", None, 1, T0 - HOUR)
    with database.write(engine) as conn:
        assert subscription_store.write(conn, "w", newer, T0)
        assert not subscription_store.write(conn, "w", older, T0)
        assert subscription_store.get(conn, "w") == newer
        same_time = subscriptions.State("scale", "active", None, 2, T0)
        assert subscription_store.write(conn, "w", same_time, T0)  # equal times: the later wins


def test_a_quarantine_backlog_never_starves_a_pending_retry(engine: Engine) -> None:
    """600 events for a product nobody added, then one pending event: it applies."""
    instances.provision(engine, "w", now=T0 - 2 * HOUR)
    for n in range(600):
        incoming = purchase(f"q-{n}", "enterprise-yearly", T0 - HOUR + dt.timedelta(seconds=n))
        assert inbox.ingest(engine, incoming, now=T0).status == "quarantined"
    # answered 200 (stored), not yet applied: what a crash between store and apply leaves
    pending = inbox.store(engine, purchase("w", "pro", T0), now=T0)
    assert pending.status == "pending"
    outcomes = inbox.retry_due(engine, now=T0 + dt.timedelta(seconds=1))
    assert outcomes == {"applied": 1}
    row = instance(engine, "w")
    assert (row.plan_id, row.credits_total) == ("pro", 5000)


def test_resolvable_quarantined_events_are_found_behind_unresolvable_ones(
    engine: Engine,
) -> None:
    from creditsync import catalog, plans

    for n in range(600):
        inbox.ingest(engine, purchase(f"q-{n}", "enterprise-yearly",
                                      T0 - 2 * HOUR + dt.timedelta(seconds=n)), now=T0)
    late = inbox.ingest(engine, purchase("late", "team-monthly", T0), now=T0)
    assert late.status == "quarantined"
    with database.write(engine) as conn:
        catalog.upsert(conn, plans.Plan("team", 2000, ("team-monthly",)), T0)
    assert inbox.retry_due(engine, now=T0 + HOUR) == {"applied": 1}
    assert instance(engine, "late").credits_total == 2000
