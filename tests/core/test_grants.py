"""Grants: spending order, idempotency, voids, expiry by the loop through the index, the
monthly rollover on every write path, and no lost or doubled credits under concurrency."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import (
    catalog,
    convergence,
    drift,
    errors,
    grants,
    inbox,
    instances,
    plans,
    runner,
    usage,
)
from creditsync.storage import database, models, schema
from tests.core.helpers import DAY, HOUR, RESET, accept, instance
from tests.support import database as database_helpers
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

ROLL = plans.Rollover(max_credits=300, expires_after=dt.timedelta(days=10))


def _grant(engine: Engine, name: str, amount: int, *, priority: int = 50,
           expires: dt.datetime | None = None, key: str | None = None,
           now: dt.datetime = T0) -> grants.Grant:
    return grants.create(engine, name, amount, reason="test", now=now, priority=priority,
                         expires_at=expires, idempotency_key=key).grant


def _remaining(engine: Engine, name: str) -> dict[str, tuple[str, int]]:
    with database.read(engine) as conn:
        return {g.id: (g.status, g.remaining) for g in grants.listing_in(conn, name)}


def test_spending_order_is_priority_then_soonest_expiry_then_oldest(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    never = _grant(engine, "u", 10, now=T0 - HOUR)  # no expiry: after those that expire
    late = _grant(engine, "u", 10, expires=T0 + 9 * DAY)
    soon = _grant(engine, "u", 10, expires=T0 + 2 * DAY)
    first = _grant(engine, "u", 10, priority=0)  # lower priority first, expiry or not
    older = _grant(engine, "u", 10, now=T0)
    newer = _grant(engine, "u", 10, now=T0 + HOUR)
    with database.read(engine) as conn:
        order = [g.id for g in grants.listing_in(conn, "u")]
    assert order == [first.id, soon.id, late.id, never.id, older.id, newer.id]
    # 100 plan credits first, then 15 from the first grant and the soonest-expiring one
    result = usage.consume(engine, "u", 115, "k", now=T0 + HOUR, pol=RESET)
    assert (result.from_plan, result.from_bonus) == (100, 15)
    left = _remaining(engine, "u")
    assert left[first.id] == ("spent", 0)
    assert left[soon.id] == ("live", 5)
    assert instance(engine, "u").bonus_credits == 45
    with database.read(engine) as conn:
        draws = conn.execute(sa.select(models.LEDGER_GRANT_DRAWS.c.grant_id,
                                       models.LEDGER_GRANT_DRAWS.c.amount)).all()
    assert sorted(draws) == sorted([(first.id, 10), (soon.id, 5)])
    assert_ledger_replays(engine)


def test_a_negative_adjustment_takes_back_in_spending_order(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    entry = usage.adjust_bonus(engine, "u", 30, "gift", now=T0)  # a grant without expiry
    soon = _grant(engine, "u", 20, expires=T0 + DAY)
    assert entry.kind == "adjustment"
    assert entry.grant_id is not None
    usage.adjust_bonus(engine, "u", -25, "oops", now=T0)
    left = _remaining(engine, "u")
    assert left[soon.id] == ("spent", 0)
    assert left[entry.grant_id] == ("live", 25)
    with pytest.raises(errors.InvalidRequest, match="has 25 bonus credits; taking 26"):
        usage.adjust_bonus(engine, "u", -26, "too much", now=T0)
    assert_ledger_replays(engine)


def test_a_repeated_key_grants_once_and_other_parameters_conflict(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    first = grants.create(engine, "u", 40, reason="promo", now=T0, idempotency_key="p1")
    again = grants.create(engine, "u", 40, reason="promo", now=T0 + HOUR,
                          idempotency_key="p1")
    assert again.replayed
    assert again.grant.id == first.grant.id
    assert not first.replayed
    with pytest.raises(errors.Conflict, match="idempotencyKey 'p1' was first used") as exc:
        grants.create(engine, "u", 41, reason="promo", now=T0, idempotency_key="p1")
    assert exc.value.code == "idempotency_key_reused"
    assert instance(engine, "u").bonus_credits == 40
    assert first.grant.id.startswith("grt_")
    assert len(first.grant.id) > 20


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"amount": 0}, "amount must be an integer from 1"),
    ({"amount": True}, "amount must be an integer from 1"),
    ({"priority": 101}, "priority must be an integer from 0 to 100"),
    ({"expires_at": T0 - HOUR}, "is not in the future"),
    ({"reason": " "}, "reason must say why"),
])
def test_bad_grants_say_what_is_wrong(engine: Engine, kwargs: dict[str, object],
                                      message: str) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    args: dict[str, object] = {"amount": 5, "reason": "r", "priority": 50, "expires_at": None}
    args.update(kwargs)
    with pytest.raises(errors.InvalidRequest, match=message):
        grants.create(engine, "u", args.pop("amount"), now=T0, **args)  # type: ignore[arg-type]
    with pytest.raises(instances.UnknownInstance):
        grants.create(engine, "nobody", 5, reason="r", now=T0)


def test_void_takes_the_remainder_with_a_ledger_row(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    g = _grant(engine, "u", 50)
    usage.consume(engine, "u", 120, "k", now=T0, pol=RESET)
    ended = grants.void(engine, "u", g.id, now=T0 + HOUR, reason="fraud")
    assert (ended.amount, ended.before.bonus_credits, ended.after.bonus_credits) == (30, 30, 0)
    assert ended.grant.status == "voided"
    assert instances.history(engine, "u")[0].kind == "grant_voided"
    with pytest.raises(errors.Conflict, match="is voided already"):
        grants.void(engine, "u", g.id, now=T0 + HOUR)
    with pytest.raises(errors.NotFound, match="has no grant grt_nope"):
        grants.void(engine, "u", "grt_nope", now=T0)
    assert_ledger_replays(engine)


def test_the_loop_expires_due_grants_and_says_what_expired(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    instances.provision(engine, "v", now=T0, pol=RESET)
    due = _grant(engine, "u", 25, expires=T0 + DAY)
    _grant(engine, "u", 5, expires=T0 + 3 * DAY)
    _grant(engine, "v", 7)
    assert grants.expire_due(engine, T0 + DAY - dt.timedelta(seconds=1)) == []
    expired = grants.expire_due(engine, T0 + DAY)
    assert [(e.grant.id, e.amount, e.before.bonus_credits, e.after.bonus_credits)
            for e in expired] == [(due.id, 25, 30, 5)]
    entry = instances.history(engine, "u")[0]
    assert (entry.kind, entry.grant_id, entry.id) == ("grant_expired", due.id,
                                                      expired[0].ledger_id)
    assert grants.expire_due(engine, T0 + DAY) == []  # nothing twice
    assert_ledger_replays(engine)


def test_consume_never_spends_a_grant_past_its_expiry(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    _grant(engine, "u", 50, expires=T0 + DAY)
    with pytest.raises(usage.InsufficientCredits) as exc:
        usage.consume(engine, "u", 101, "k", now=T0 + DAY, pol=RESET)
    assert exc.value.remaining == 100
    usage.consume(engine, "u", 10, "k2", now=T0 + DAY, pol=RESET)
    assert instance(engine, "u").bonus_credits == 0  # expired by the consume itself
    assert_ledger_replays(engine)


def test_due_expiries_are_found_through_the_partial_index(engine: Engine) -> None:
    query = sa.select(models.GRANTS.c.instance_id).where(
        grants._LIVE_WITH_EXPIRY, models.GRANTS.c.expires_at <= T0).distinct()
    with database.read(engine) as conn:
        if database.is_sqlite(conn):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}"))
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "ix_grants_live_expires_at" in plan, plan


def test_grants_past_expiry_are_no_drift(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    _grant(engine, "u", 9, expires=T0 + HOUR)
    assert list(drift.scan(engine, instance_ids=["u"], now=T0 + 2 * HOUR, pol=RESET)) == []
    summary = convergence.converge(engine, trigger="timer", actor="timer",
                                   now=T0 + 2 * HOUR, instance_ids=["u"], pol=RESET)
    assert (summary.drifted, summary.repaired) == (0, 0)
    assert instance(engine, "u").bonus_credits == 9  # the loop's, not the reconciler's


def test_the_standalone_loop_expires_grants_on_its_frequent_step(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    g = _grant(engine, "u", 9, expires=T0 + HOUR)  # T0 is long past: due now
    runner.Runner(engine, interval=dt.timedelta(hours=1)).frequent()
    assert _remaining(engine, "u")[g.id] == ("expired", 0)


def _rollover_catalog(engine: Engine) -> None:
    with database.write(engine) as conn:
        catalog.upsert(conn, plans.Plan("pro", 5000, rollover=ROLL), T0)


@pytest.mark.parametrize("path", ["timer", "consume", "webhook"])
def test_unused_plan_credits_roll_over_at_the_reset(engine: Engine, path: str) -> None:
    """Each write path that applies the monthly reset (the set-based batch writer, the
    consume that finds it due, a webhook's decision) makes the same rollover grant."""
    _rollover_catalog(engine)
    instances.provision(engine, "u", now=T0, pol=RESET)
    accept(engine, "u", "PaidPlanPurchased", T0, "pro")
    convergence.converge(engine, trigger="webhook", actor="webhook", now=T0, pol=RESET)
    usage.consume(engine, "u", 4800, "k", now=T0 + HOUR, pol=RESET)  # 200 unused
    end = instance(engine, "u").period_end
    later = end + 2 * DAY
    if path == "timer":
        convergence.converge(engine, trigger="timer", actor="timer", now=later, pol=RESET)
    elif path == "consume":
        usage.consume(engine, "u", 1, "k2", now=later, pol=RESET)
    else:
        inbox.ingest(engine, inbox.Incoming("u", "PaidPlanAutoRenewalCancelled", later, "pro",
                                            later + 90 * DAY, {}), now=later, pol=RESET)
    with database.read(engine) as conn:
        rolled = [g for g in grants.listing_in(conn, "u") if g.source == "rollover"]
    assert len(rolled) == 1
    assert (rolled[0].amount, rolled[0].expires_at) == (200, end + ROLL.expires_after)
    kinds = [h.kind for h in reversed(instances.history(engine, "u"))]
    assert kinds[-3 if path == "consume" else -2:][:2] == ["period_reset", "rollover"]
    assert_ledger_replays(engine)


def test_rollover_is_capped_and_follows_the_plan_at_the_reset(engine: Engine) -> None:
    _rollover_catalog(engine)
    instances.provision(engine, "u", now=T0, pol=RESET)
    accept(engine, "u", "PaidPlanPurchased", T0, "pro")
    convergence.converge(engine, trigger="webhook", actor="webhook", now=T0, pol=RESET)
    end = instance(engine, "u").period_end
    convergence.converge(engine, trigger="timer", actor="timer", now=end, pol=RESET)
    # capped at maxCredits; then a move to a plan without rollover: none at its reset
    assert instance(engine, "u").bonus_credits == 300
    accept(engine, "u", "PaidPlanChanged", end + HOUR, "scale")
    convergence.converge(engine, trigger="webhook", actor="webhook", now=end + HOUR,
                         pol=RESET)
    next_end = instance(engine, "u").period_end
    convergence.converge(engine, trigger="timer", actor="timer", now=next_end, pol=RESET)
    assert instance(engine, "u").bonus_credits == 300
    assert_ledger_replays(engine)


def test_concurrent_consumes_grants_and_voids_never_lose_or_double_spend(
    engine: Engine,
) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    made: list[str] = []
    spent = [0]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def granter() -> None:
        try:
            for n in range(20):
                g = _grant(engine, "u", 10, priority=n % 3, key=f"g{n}")
                with lock:
                    made.append(g.id)
        except BaseException as exc:
            failures.append(exc)

    def consumer(worker: int) -> None:
        try:
            for n in range(25):
                try:
                    usage.consume(engine, "u", 7, f"c{worker}-{n}", now=T0, pol=RESET)
                except usage.InsufficientCredits:
                    continue
                with lock:
                    spent[0] += 7
        except BaseException as exc:
            failures.append(exc)

    def voider() -> None:
        try:
            for _ in range(20):
                with lock:
                    chosen = made[len(made) // 2] if made else None
                if chosen is not None:
                    with contextlib.suppress(errors.Conflict):
                        grants.void(engine, "u", chosen, now=T0)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=granter), threading.Thread(target=voider),
               *(threading.Thread(target=consumer, args=(w,)) for w in range(3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    row = instance(engine, "u")
    with database.read(engine) as conn:
        voided = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(
            models.LEDGER.c.bonus_before - models.LEDGER.c.bonus_after), 0)).where(
            models.LEDGER.c.kind == "grant_voided")).scalar_one()
    # every credit (100 plan, 200 granted) is spent, voided or still there; none twice
    assert spent[0] + int(voided) + row.bonus_credits + (100 - row.credits_used_month) == 300
    assert_ledger_replays(engine)


def test_the_migration_turns_bonus_credits_into_one_grant_each(empty_url: str) -> None:
    engine = database.create(empty_url)
    try:
        schema.upgrade(engine, "0003")
        with database.write(engine) as conn:  # the instances table is as 0003 left it
            conn.execute(database_helpers.instances_as_of_0003().insert(), [
                {"instance_id": name, "plan_id": "free", "credits_total": 100,
                 "bonus_credits": bonus, "credits_used_month": 0, "period_start": T0,
                 "period_end": T0 + 30 * DAY, "applied_rev": 0, "version": 0,
                 "created_at": T0, "updated_at": T0} for name, bonus in (("a", 70), ("b", 0))])
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, T0)
        with database.read(engine) as conn:
            made = grants.listing_in(conn, "a")
            assert grants.listing_in(conn, "b") == []
        assert [(g.amount, g.remaining, g.source, g.status, g.expires_at) for g in made] == [
            (70, 70, "migration", "live", None)]
        assert made[0].id.startswith("grt_")
        usage.consume(engine, "a", 120, "k", now=T0 + HOUR, pol=RESET)  # spends the grant
        assert instance(engine, "a").bonus_credits == 50
        assert_ledger_replays(engine, chain=False, instance_id="a")  # rows since 0006
    finally:
        engine.dispose()
