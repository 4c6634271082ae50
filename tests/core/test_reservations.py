"""Reservations: hold, then commit or release; expiry; resets and plan changes while held."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import (
    catalog,
    clock,
    convergence,
    enums,
    errors,
    instances,
    policy,
    reservations,
    runner,
    usage,
)
from creditsync.storage import database, models, schema
from tests.core.helpers import DAY, HOUR, RESET, accept, instance
from tests.support import waiting
from tests.support.database import instances_as_of_0003
from tests.support.holds import assert_holds_match
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

MINUTE = HOUR / 60


def _credits(engine: Engine, name: str = "u") -> instances.Credits:
    return instances.credits(engine, name, now=T0, pol=RESET)


def test_a_hold_is_not_spendable_and_writes_no_ledger_row(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    held = reservations.reserve(engine, "u", 60, "job-1", now=T0, pol=RESET)
    assert held.id.startswith("rsv_")
    assert len(held.id) > 20
    assert (held.status, held.amount, held.expires_at) == ("held", 60, T0 + 15 * MINUTE)
    found = _credits(engine)
    assert (found.credits_held, found.credits_remaining, found.credits_used) == (60, 40, 0)
    with pytest.raises(errors.InsufficientCredits) as short:
        usage.consume(engine, "u", 41, "k", now=T0, pol=RESET)
    assert short.value.remaining == 40
    with pytest.raises(errors.InsufficientCredits):
        reservations.reserve(engine, "u", 41, "job-2", now=T0, pol=RESET)
    assert [h.kind for h in instances.history(engine, "u")] == ["provision"]
    assert_holds_match(engine)


def test_commit_charges_once_with_the_reservation_as_correlation(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.adjust_bonus(engine, "u", 20, "gift", now=T0)
    held = reservations.reserve(engine, "u", 110, "job", now=T0, pol=RESET)
    done = reservations.commit(engine, held.id, 105, now=T0 + MINUTE, pol=RESET)
    assert (done.status, done.committed_amount, done.replayed) == ("committed", 105, False)
    again = reservations.commit(engine, held.id, now=T0 + HOUR, pol=RESET)
    assert (again.status, again.committed_amount, again.replayed) == ("committed", 105, True)
    row = instance(engine, "u")
    assert (row.credits_used_month, row.bonus_credits, row.credits_held) == (100, 15, 0)
    entries = [h for h in instances.history(engine, "u") if h.kind == "usage"]
    assert [(h.correlation_id, h.credits_used_after, h.bonus_after) for h in entries] == [
        (held.id, 100, 15)]
    with pytest.raises(errors.Conflict, match="was committed with amount 105, not 7"):
        reservations.commit(engine, held.id, 7, now=T0 + HOUR, pol=RESET)
    with pytest.raises(errors.Conflict, match="was committed"):
        reservations.release(engine, held.id, now=T0 + HOUR)
    assert_ledger_replays(engine)
    assert_holds_match(engine)


def test_a_commit_larger_than_the_hold_is_refused(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    held = reservations.reserve(engine, "u", 10, "job", now=T0, pol=RESET)
    with pytest.raises(errors.InvalidRequest, match="holds 10 credits; 11 cannot be") as e:
        reservations.commit(engine, held.id, 11, now=T0, pol=RESET)
    assert e.value.code == "commit_exceeds_hold"
    assert reservations.get(engine, held.id).status == "held"
    assert _credits(engine).credits_held == 10


def test_release_frees_all_and_is_idempotent(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    held = reservations.reserve(engine, "u", 70, "job", now=T0, pol=RESET)
    freed = reservations.release(engine, held.id, now=T0)
    assert (freed.status, freed.replayed) == ("released", False)
    assert reservations.release(engine, held.id, now=T0).replayed
    with pytest.raises(errors.Conflict, match="was released: it cannot be committed"):
        reservations.commit(engine, held.id, now=T0, pol=RESET)
    assert (_credits(engine).credits_remaining, _credits(engine).credits_held) == (100, 0)
    assert [h.kind for h in instances.history(engine, "u")] == ["provision"]


def test_the_same_key_answers_the_first_hold(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    first = reservations.reserve(engine, "u", 30, "job", now=T0, pol=RESET)
    again = reservations.reserve(engine, "u", 30, "job", now=T0, pol=RESET)
    assert (again.id, again.replayed) == (first.id, True)
    with pytest.raises(errors.IdempotencyConflict, match="first used with amount 30, not 31"):
        reservations.reserve(engine, "u", 31, "job", now=T0, pol=RESET)
    assert _credits(engine).credits_held == 30


def test_an_expired_hold_frees_its_credits_and_leaves_the_numbers(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    instances.provision(engine, "v", now=T0, pol=RESET)
    short = reservations.reserve(engine, "u", 40, "a", ttl=MINUTE, now=T0, pol=RESET)
    long = reservations.reserve(engine, "u", 20, "b", ttl=HOUR, now=T0, pol=RESET)
    other = reservations.reserve(engine, "v", 5, "a", ttl=MINUTE, now=T0, pol=RESET)
    before = instance(engine, "u")
    assert reservations.expire_due(engine, now=T0 + MINUTE / 2) == 0
    assert reservations.expire_due(engine, now=T0 + MINUTE) == 2
    assert reservations.expire_due(engine, now=T0 + MINUTE) == 0
    assert [reservations.get(engine, r.id).status for r in (short, long, other)] == [
        "expired", "held", "expired"]
    after = instance(engine, "u")
    assert instances.numbers_of(after) == instances.numbers_of(before)
    assert (after.credits_held, after.version) == (20, before.version)
    with pytest.raises(errors.Conflict, match="expired"):
        reservations.commit(engine, short.id, now=T0 + MINUTE, pol=RESET)
    assert reservations.release(engine, short.id, now=T0 + MINUTE).status == "expired"
    assert_holds_match(engine)


def test_a_hold_past_its_ttl_never_refuses_a_spend_nor_commits(engine: Engine) -> None:
    """Before the loop sweeps it, a spend that needs its credits expires it first."""
    instances.provision(engine, "u", now=T0, pol=RESET)
    held = reservations.reserve(engine, "u", 100, "a", ttl=MINUTE, now=T0, pol=RESET)
    assert usage.consume(engine, "u", 100, "k", now=T0 + MINUTE, pol=RESET).credits_remaining \
        == 0
    assert reservations.get(engine, held.id).status == "expired"
    with pytest.raises(errors.Conflict, match="expired"):
        reservations.commit(engine, held.id, now=T0 + 2 * MINUTE, pol=RESET)
    assert_holds_match(engine)


def test_a_monthly_reset_keeps_the_hold_valid(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.consume(engine, "u", 50, "k", now=T0, pol=RESET)
    held = reservations.reserve(engine, "u", 50, "job", ttl=DAY, now=T0 + 31 * DAY - HOUR,
                                pol=RESET)
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=T0 + 31 * DAY,
                         pol=RESET)
    found = instances.credits(engine, "u", now=T0 + 31 * DAY, pol=RESET)
    assert (found.credits_used, found.credits_held, found.credits_remaining) == (0, 50, 50)
    reservations.commit(engine, held.id, 30, now=T0 + 31 * DAY, pol=RESET)
    assert instance(engine, "u").credits_used_month == 30
    assert_ledger_replays(engine)
    assert_holds_match(engine)


def test_a_downgrade_below_the_hold_still_commits(engine: Engine) -> None:
    """Preserve keeps the usage: the pro hold outlives the move to free; its commit is
    charged to the period's usage beyond the free allocation."""
    keep = policy.Policy(enums.UsagePolicy.PRESERVE)
    instances.provision(engine, "u", now=T0, pol=keep)
    accept(engine, "u", "PaidPlanPurchased", T0, "pro")
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=T0, pol=keep)
    usage.consume(engine, "u", 50, "k", now=T0, pol=keep)
    held = reservations.reserve(engine, "u", 400, "job", ttl=DAY, now=T0, pol=keep)
    accept(engine, "u", "PaidPlanChanged", T0 + HOUR, "free")
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=T0 + HOUR, pol=keep)
    found = instances.credits(engine, "u", now=T0 + HOUR, pol=keep)
    assert (found.credits_total, found.credits_used, found.credits_remaining) == (100, 50, 0)
    done = reservations.commit(engine, held.id, now=T0 + 2 * HOUR, pol=keep)
    assert done.committed_amount == 400
    row = instance(engine, "u")
    assert (row.credits_used_month, row.credits_held) == (450, 0)
    assert instances.credits(engine, "u", now=T0 + HOUR, pol=keep).credits_remaining == 0
    assert_ledger_replays(engine)


def test_draw_is_plan_first_then_bonus_then_the_plan_beyond() -> None:
    assert usage.draw(10, 5, 8) == usage.Draw(8, 0)
    assert usage.draw(10, 5, 13) == usage.Draw(10, 3)
    assert usage.draw(10, 5, 20) == usage.Draw(15, 5)
    assert usage.draw(0, 0, 4) == usage.Draw(4, 0)


def test_bad_reservations_say_what_is_wrong(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    with pytest.raises(errors.InvalidRequest, match="ttl must be 1 to 86400 seconds"):
        reservations.reserve(engine, "u", 1, "k", ttl=DAY * 2, now=T0)
    with pytest.raises(errors.InvalidRequest, match="amount must be a positive integer"):
        reservations.reserve(engine, "u", 0, "k", now=T0)
    with pytest.raises(instances.UnknownInstance):
        reservations.reserve(engine, "nobody", 1, "k", now=T0)
    with pytest.raises(reservations.UnknownReservation, match="rsv_nope does not exist"):
        reservations.commit(engine, "rsv_nope", now=T0)


def test_concurrent_holds_and_consumes_never_overspend(engine: Engine) -> None:
    """Real threads race for a small balance: what is charged and held never exceeds it."""
    instances.provision(engine, "u", now=T0, pol=RESET)
    results: list[str] = []
    problems: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for step in range(8):
                key = f"w{n}-{step}"
                try:
                    if (n + step) % 3 == 0:
                        usage.consume(engine, "u", 7, key, now=T0, pol=RESET)
                        outcome = "consumed"
                    else:
                        held = reservations.reserve(engine, "u", 9, key, now=T0, pol=RESET)
                        if step % 2:
                            reservations.commit(engine, held.id, 5, now=T0, pol=RESET)
                            outcome = "committed"
                        else:
                            outcome = "held"
                except errors.InsufficientCredits:
                    outcome = "short"
                with lock:
                    results.append(outcome)
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert "short" in results
    row = instance(engine, "u")
    spent = 7 * results.count("consumed") + 5 * results.count("committed")
    assert row.credits_used_month == spent
    assert row.credits_held == 9 * results.count("held")
    assert spent + row.credits_held <= 100
    assert_holds_match(engine)
    assert_ledger_replays(engine)
    with database.read(engine) as conn:
        usage_rows = conn.execute(sa.select(sa.func.count()).select_from(models.LEDGER).where(
            models.LEDGER.c.kind == enums.LedgerKind.USAGE)).scalar_one()
    assert usage_rows == results.count("consumed") + results.count("committed")


def test_the_standalone_loop_expires_holds_between_runs(engine: Engine) -> None:
    now = clock.utcnow()
    instances.provision(engine, "u", now=now - HOUR)
    held = reservations.reserve(engine, "u", 10, "k", ttl=MINUTE, now=now - HOUR)
    kept = reservations.reserve(engine, "u", 5, "j", ttl=DAY, now=now - HOUR)
    loop = runner.Runner(engine, interval=HOUR, retry_every=dt.timedelta(milliseconds=50))
    thread = loop.start()
    try:
        waiting.wait_for("the loop to expire the hold",
                         lambda: reservations.get(engine, held.id).status == "expired",
                         timeout=20)
    finally:
        loop.stopping.set()
        thread.join(10)
    assert reservations.get(engine, kept.id).status == "held"
    assert instance(engine, "u").credits_held == 5


def test_the_migration_gives_existing_instances_no_holds(empty_url: str) -> None:
    engine = database.create(empty_url)
    try:
        schema.upgrade(engine, "0003")
        old = instances_as_of_0003()
        with database.write(engine) as conn:
            conn.execute(old.insert().values(
                instance_id="before", plan_id="free", credits_total=100, bonus_credits=0,
                credits_used_month=0, period_start=T0, period_end=T0 + 30 * DAY,
                applied_rev=0, version=0, created_at=T0, updated_at=T0))
        schema.upgrade(engine)
        assert schema.current(engine) == schema.head()
        assert instance(engine, "before").credits_held == 0
        with database.write(engine) as conn:
            catalog.seed(conn, None, T0)
        held = reservations.reserve(engine, "before", 10, "k", now=T0, pol=RESET)
        assert instance(engine, "before").credits_held == held.amount
    finally:
        engine.dispose()


def test_a_refused_spend_keeps_the_holds_it_expired_to_make_room(engine: Engine) -> None:
    """A consume or hold that is short expires the holds past their TTL first; the 402 must
    not roll that back (found by the state machine: the expired hold came back)."""
    instances.provision(engine, "r", now=T0, pol=RESET)
    stale = reservations.reserve(engine, "r", 1, "stale", ttl=MINUTE, now=T0, pol=RESET)
    later = instance(engine, "r").period_end + MINUTE  # the hold's TTL is long past
    reservations.reserve(engine, "r", 60, "big", now=later, pol=RESET)
    with pytest.raises(errors.InsufficientCredits):
        usage.consume(engine, "r", 41, "k", now=later, pol=RESET)  # 39 spendable, +1 stale
    assert reservations.get(engine, stale.id).status == "expired"
    assert (instance(engine, "r").credits_held, instance(engine, "r").credits_used_month) == (
        60, 0)
    with pytest.raises(errors.InsufficientCredits):
        reservations.reserve(engine, "r", 41, "k2", now=later, pol=RESET)
    assert_holds_match(engine)
    assert_ledger_replays(engine)
