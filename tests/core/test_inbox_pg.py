"""The webhook's async PostgreSQL path (`creditsync.inbox_pg`) against the reference.

Random event sequences (every type, known, aliased and unknown products, reordered and
repeated times, expiries around now) go through `inbox.ingest` on one database and
through `inbox_pg.store` + `inbox_pg.process` on another: every answer, subscription,
instance, ledger row and inbox row must come out the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from creditsync import catalog, inbox, plans, policy
from creditsync.storage import database, inbox_pg, models
from tests.support.database import fresh_database
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

TYPES = ["AppInstalled", "AppRemoved", "PaidPlanPurchased", "PaidPlanChanged",
         "PaidPlanAutoRenewalCancelled", "PlanConvertedToPaid", "PlanReactivated",
         "PlanTransferred", "SiteRenamed"]
PRODUCTS = [None, "free", "starter", "pro", "pro-yearly", "scale", "mystery"]
_examples = itertools.count()

events = st.lists(st.tuples(
    st.sampled_from(TYPES), st.integers(0, 1), st.sampled_from(PRODUCTS),
    st.integers(-72, 0),  # operationTimeStamp, hours from T0 (repeats: duplicates)
    st.one_of(st.none(), st.integers(-240, 240)),  # expiresOn, hours from T0
    st.integers(0, 2000),  # minutes after T0 it arrives
), min_size=1, max_size=12)


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    with fresh_database(request, "postgres", tmp_path / "a") as a, \
            fresh_database(request, "postgres", tmp_path / "b") as b:
        engines = database.create(a), database.create(b)
        for engine in engines:
            with database.write(engine) as conn:
                catalog.upsert(conn, plans.Plan("pro", 5000, aliases=("pro-yearly",)), T0)
        loop = asyncio.new_event_loop()
        pool = inbox_pg.pool(b, size=2)
        loop.run_until_complete(pool.open(wait=True))
        try:
            yield engines, (loop, pool)
        finally:
            loop.run_until_complete(pool.close())
            loop.close()
            for engine in engines:
                engine.dispose()


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=events)
@example(sequence=[  # two instances' events arriving in the same instant
    ("SiteRenamed", 0, "pro-yearly", -45, None, 398),
    ("AppInstalled", 1, "starter", -47, -225, 853),
    ("SiteRenamed", 1, "pro-yearly", -45, None, 398),
    ("SiteRenamed", 0, "pro-yearly", -15, None, 499)])
@example(sequence=[  # install, purchase, a stale change, removal, reinstall, a retry, ...
    ("AppInstalled", 0, None, -72, None, 0),
    ("PaidPlanPurchased", 0, "pro-yearly", -48, None, 1),
    ("PaidPlanChanged", 0, "scale", -60, None, 2),
    ("AppRemoved", 0, None, -24, None, 3),
    ("AppInstalled", 0, None, -12, None, 4),
    ("PaidPlanPurchased", 0, "pro-yearly", -48, None, 5),
    ("PaidPlanAutoRenewalCancelled", 0, "pro", -6, -1, 6),
    ("PlanTransferred", 0, "mystery", 0, None, 900)])
def test_the_async_path_decides_exactly_like_the_reference(
    databases: tuple[Any, Any], sequence: list[tuple[Any, ...]],
) -> None:
    (reference, _), (loop, pool) = databases
    prefix = f"eq{next(_examples)}-"
    pol = policy.Policy(expiry_grace_period=dt.timedelta(hours=6))
    arrivals = sorted(sequence, key=lambda e: e[5])
    answers_a, answers_b = [], []
    for event_type, who, product, at, expires, arrives in arrivals:
        payload: dict[str, Any] = {}
        if product is not None:
            payload["vendorProductId"] = product
        if expires is not None:
            payload["expiresOn"] = (T0 + dt.timedelta(hours=expires)).isoformat()
        incoming = inbox.Incoming(
            instance_id=f"{prefix}{who}", event_type=event_type,
            operation_time=T0 + dt.timedelta(hours=at), product_id=product,
            expires_at=None, payload=payload)
        now = T0 + dt.timedelta(minutes=arrives)
        answers_a.append(inbox.ingest(reference, incoming, now=now, pol=pol).status)
        answers_b.append(loop.run_until_complete(_ingest(pool, incoming, now, pol)))

    assert answers_b == answers_a
    assert _state(databases[0][1], prefix) == _state(reference, prefix)


async def _ingest(pool: Any, incoming: inbox.Incoming, now: dt.datetime,
                  pol: policy.Policy) -> str:
    if len(incoming.instance_id) % 2:  # both entry points: the webhook's, and store+process
        return (await inbox_pg.ingest(pool, incoming, now=now, pol=pol)).status
    receipt = await inbox_pg.store(pool, incoming, now)
    if receipt.status != "pending":
        return receipt.status
    return await inbox_pg.process(pool, receipt.event_id, now=now, pol=pol)


def _state(engine: Any, prefix: str) -> dict[str, Any]:
    """Everything the two paths write, with event ids replaced by their arrival order."""
    e, s, i, ledger, out = (models.WEBHOOK_EVENTS, models.SUBSCRIPTIONS,
                            models.INSTANCES, models.LEDGER, models.OUTBOX)
    like = f"{prefix}%"
    with database.read(engine) as conn:
        inbox_rows = conn.execute(sa.select(e).where(e.c.instance_id.like(like))
                                  .order_by(e.c.received_at, e.c.dedupe_key)).all()
        order = {row.id: n for n, row in enumerate(inbox_rows)}
        return {
            "inbox": [{k: v for k, v in row._mapping.items() if k not in ("id",)}
                      for row in inbox_rows],
            "subscriptions": [dict(row._mapping) for row in conn.execute(
                sa.select(s).where(s.c.instance_id.like(like)).order_by(s.c.instance_id))],
            "instances": [dict(row._mapping) for row in conn.execute(
                sa.select(i).where(i.c.instance_id.like(like)).order_by(i.c.instance_id))],
            "ledger": [{**{k: v for k, v in row._mapping.items() if k != "id"},
                        "correlation_id": order.get(row.correlation_id, row.correlation_id)}
                       for row in conn.execute(sa.select(ledger).where(
                           ledger.c.instance_id.like(like)).order_by(ledger.c.id))],
            # events to the app, each with the kind of the ledger row it names
            "outbox": [(row.instance_id, row.type, row.status, row.created_at,
                        {**row.payload, "data": {**row.payload["data"], "ledgerId": None}},
                        row.kind)
                       for row in conn.execute(
                           sa.select(out, ledger.c.kind)
                           .join(ledger, ledger.c.id == out.c.payload["data"]["ledgerId"]
                                 .as_integer(), isouter=True)
                           .where(out.c.instance_id.like(like)).order_by(out.c.seq))],
        }


def test_a_reset_with_rollover_is_written_alike_by_both_paths(
    databases: tuple[Any, Any],
) -> None:
    """A webhook that finds the monthly reset due rolls the unused plan credits over into a
    grant, on the async path exactly as on the reference (grant ids aside: they are new)."""
    (reference, other), (loop, pool) = databases
    rule = plans.Rollover(700, dt.timedelta(days=10))
    for engine in (reference, other):
        with database.write(engine) as conn:
            catalog.upsert(conn, plans.Plan("pro", 5000, aliases=("pro-yearly",),
                                            rollover=rule), T0)
    pol = policy.Policy()
    later = T0 + dt.timedelta(days=35)
    for prefix in ("roll-", "rolls-"):  # both entry points of the async path
        name = f"{prefix}x"
        steps = [(inbox.Incoming(name, "PaidPlanPurchased", T0, "pro", None,
                                 {"vendorProductId": "pro"}), T0),
                 (inbox.Incoming(name, "PaidPlanAutoRenewalCancelled", later, "pro", None,
                                 {"vendorProductId": "pro",
                                  "expiresOn": (later + dt.timedelta(days=20)).isoformat()}),
                  later)]
        for incoming, now in steps:
            assert inbox.ingest(reference, incoming, now=now, pol=pol).status == "applied"
            assert loop.run_until_complete(_ingest(pool, incoming, now, pol)) == "applied"
        states = [_state(engine, prefix) for engine in (reference, other)]
        made = [_grants(engine, name) for engine in (reference, other)]
        for state in states:
            for row in state["ledger"]:
                row["grant_id"] = row["grant_id"] is not None
        assert states[0] == states[1]
        assert made[0] == made[1]
        assert [(g["amount"], g["source"], g["status"]) for g in made[0]] == [
            (700, "rollover", "live")]
        assert [row["kind"] for row in states[1]["ledger"]][-2:] == ["period_reset", "rollover"]
    for engine in (reference, other):
        assert_ledger_replays(engine)


def _grants(engine: Any, instance_id: str) -> list[dict[str, Any]]:
    g = models.GRANTS
    with database.read(engine) as conn:
        return [{k: v for k, v in row._mapping.items() if k != "id"}
                for row in conn.execute(sa.select(g).where(g.c.instance_id == instance_id))]
