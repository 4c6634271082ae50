"""Each instance's copy of its subscription's desired fields (migration 0008's triggers):
equal to the subscription after every write of either table, whoever writes, so the drift
test can read the instance row alone and still see a subscription edited by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from creditsync import catalog, convergence, drift, instances, policy
from creditsync.storage import database, models, schema
from tests.core.helpers import DAY, HOUR, RESET, accept, instance
from tests.support.database import instances_as_of_0003, new_pg_database
from tests.support.times import T0

_i, _s = models.INSTANCES, models.SUBSCRIPTIONS
COPY = ("paid_plan_id", "paid_until", "subscription_rev", "subscription_time")


def wrong_copies(engine: Engine) -> list[tuple[object, ...]]:
    """The instances whose copy differs from their subscription (what it should be)."""
    paid = sa.case((_s.c.status != "removed", _s.c.plan_id))
    should = (paid, _s.c.expires_at, _s.c.rev, _s.c.source_time)
    found = sa.select(_i.c.instance_id, *(_i.c[name] for name in COPY), *should).select_from(
        _i.outerjoin(_s, _s.c.instance_id == _i.c.instance_id)).where(sa.or_(*(
            _i.c[name].is_distinct_from(value) for name, value in zip(COPY, should,
                                                                       strict=True))))
    with database.read(engine) as conn:
        return [tuple(row) for row in conn.execute(found)]


def write_subscription(engine: Engine, instance_id: str, **values: object) -> None:
    """Write the subscriptions table by hand, as an operator with `psql` would."""
    row = {"plan_id": "pro", "status": "active", "expires_at": None, "rev": 1,
           "source_time": T0, "updated_at": T0} | values
    with database.write(engine) as conn:
        if conn.execute(_s.update().where(_s.c.instance_id == instance_id)
                        .values(**row)).rowcount == 0:
            conn.execute(_s.insert().values(instance_id=instance_id, **row))


def test_the_copy_follows_the_ingress_paths_and_hand_edits(engine: Engine) -> None:
    instances.provision(engine, "a", now=T0, pol=RESET)
    assert instance(engine, "a").paid_plan_id is None
    accept(engine, "a", "PaidPlanPurchased", T0 + HOUR, "pro")
    row = instance(engine, "a")
    assert (row.paid_plan_id, row.paid_until, row.subscription_rev) == ("pro", None, 1)
    assert row.subscription_time == T0 + HOUR
    accept(engine, "a", "PaidPlanAutoRenewalCancelled", T0 + 2 * HOUR, "pro",
           expires=T0 + 10 * DAY)
    assert instance(engine, "a").paid_until == T0 + 10 * DAY
    accept(engine, "a", "AppRemoved", T0 + 3 * HOUR)
    assert instance(engine, "a").paid_plan_id is None  # removed: no paid plan
    write_subscription(engine, "a", plan_id="scale", status="active", rev=9)
    assert (instance(engine, "a").paid_plan_id, instance(engine, "a").subscription_rev) == (
        "scale", 9)
    with database.write(engine) as conn:
        conn.execute(_s.delete().where(_s.c.instance_id == "a"))
    row = instance(engine, "a")
    assert (row.paid_plan_id, row.paid_until, row.subscription_rev,
            row.subscription_time) == (None, None, None, None)
    assert wrong_copies(engine) == []


def test_an_instance_inserted_after_its_subscription_gets_the_copy(engine: Engine) -> None:
    write_subscription(engine, "late", plan_id="starter", rev=3)
    instances.provision(engine, "late", now=T0 + HOUR, pol=RESET)
    assert (instance(engine, "late").paid_plan_id,
            instance(engine, "late").subscription_rev) == ("starter", 3)
    assert wrong_copies(engine) == []


def test_a_full_scan_applies_a_subscription_edited_by_hand(engine: Engine) -> None:
    """Nobody announced it, so no tick knows; the hourly full scan finds and counts it."""
    instances.provision(engine, "comped", now=T0, pol=RESET)
    convergence.full_scan(engine, now=T0 + HOUR, pol=RESET)
    write_subscription(engine, "comped", plan_id="pro", source_time=T0 + HOUR)
    assert convergence.tick(engine, now=T0 + 2 * HOUR, pol=RESET).repaired == 0
    audit = convergence.full_scan(engine, now=T0 + 3 * HOUR, pol=RESET)
    assert (audit.scanned, audit.repaired, audit.missed) == (1, 1, 1)
    row = instance(engine, "comped")
    assert (row.plan_id, row.credits_total) == ("pro", 5000)
    assert list(drift.scan(engine, now=T0 + 3 * HOUR, pol=RESET)) == []


_write = st.one_of(
    st.tuples(st.just("subscribe"), st.sampled_from(["a", "b", "c"]),
              st.sampled_from(["starter", "pro"]),
              st.sampled_from(["active", "cancelled", "removed"]),
              st.sampled_from([None, T0 + DAY]), st.integers(0, 3)),
    st.tuples(st.just("unsubscribe"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("provision"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("uninstall"), st.sampled_from(["a", "b", "c"])),
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(_write, max_size=12))
def test_any_sequence_of_writes_keeps_every_copy_equal(
        backend: str, writes: list[tuple[object, ...]], request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    engine = _fresh(backend, request, tmp_path_factory.mktemp("copy"))
    try:
        for write in writes:
            kind, name = write[0], str(write[1])
            if kind == "subscribe":
                _, _, plan, status, expires, rev = write
                write_subscription(engine, name, plan_id=plan, status=status,
                                   expires_at=expires, rev=rev)
            elif kind == "unsubscribe":
                with database.write(engine) as conn:
                    conn.execute(_s.delete().where(_s.c.instance_id == name))
            elif kind == "provision":
                instances.provision(engine, name, now=T0, pol=RESET)
            else:
                with database.write(engine) as conn:
                    conn.execute(_i.delete().where(_i.c.instance_id == name))
            assert wrong_copies(engine) == [], writes
    finally:
        engine.dispose()


def _fresh(backend: str, request: pytest.FixtureRequest, directory: Path) -> Engine:
    if backend == "sqlite":
        url = f"sqlite:///{directory}/copy.db"
    else:
        cluster = request.getfixturevalue("pg")
        url = cluster.url(new_pg_database(cluster))
    engine = database.create(url)
    schema.upgrade(engine)
    with database.write(engine) as conn:
        catalog.seed(conn, None, T0)
    return engine


def test_the_migration_copies_existing_subscriptions(empty_url: str) -> None:
    engine = database.create(empty_url)
    try:
        schema.upgrade(engine, "0007")
        old = instances_as_of_0003()
        subscriptions = sa.table("subscriptions", *(sa.column(c) for c in (
            "instance_id", "plan_id", "status", "rev")), sa.column("expires_at",
            models.UTCDateTime()), sa.column("source_time", models.UTCDateTime()),
            sa.column("updated_at", models.UTCDateTime()))
        with database.write(engine) as conn:
            for name in ("paid", "gone", "free"):
                conn.execute(old.insert().values(
                    instance_id=name, plan_id="free", credits_total=100, bonus_credits=0,
                    credits_used_month=0, period_start=T0, period_end=T0 + 30 * DAY,
                    applied_rev=0, version=0, created_at=T0, updated_at=T0))
            conn.execute(subscriptions.insert(), [
                {"instance_id": "paid", "plan_id": "pro", "status": "cancelled", "rev": 2,
                 "expires_at": T0 + DAY, "source_time": T0, "updated_at": T0},
                {"instance_id": "gone", "plan_id": "pro", "status": "removed", "rev": 4,
                 "expires_at": None, "source_time": T0, "updated_at": T0}])
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, T0)
        paid, gone, free = (instance(engine, name) for name in ("paid", "gone", "free"))
        assert (paid.paid_plan_id, paid.paid_until, paid.subscription_rev) == (
            "pro", T0 + DAY, 2)
        assert (gone.paid_plan_id, gone.subscription_rev) == (None, 4)
        assert (free.paid_plan_id, free.subscription_rev) == (None, None)
        assert wrong_copies(engine) == []
        # and the drift test reads the copy: the paid instance is drifted until converged
        found = {d.instance_id for d in drift.scan(engine, now=T0 + HOUR,
                                                   pol=policy.Policy("Reset"))}
        assert "paid" in found
        assert "free" not in found
    finally:
        engine.dispose()
