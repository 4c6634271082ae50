"""Usage and bonus credits: atomic, idempotent, plan credits first, then bonus."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.engine import Engine

from creditsync import catalog, convergence, errors, instances, plans, usage
from creditsync.storage import database
from tests.core.helpers import DAY, HOUR, RESET, accept, instance
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0


def test_consume_draws_plan_credits_then_bonus(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.adjust_bonus(engine, "u", 30, "support gesture", now=T0)
    first = usage.consume(engine, "u", 90, "k1", now=T0 + HOUR, pol=RESET)
    second = usage.consume(engine, "u", 25, "k2", now=T0 + HOUR, pol=RESET)
    assert (first.from_plan, first.from_bonus, first.credits_remaining) == (90, 0, 40)
    assert (second.from_plan, second.from_bonus, second.credits_remaining) == (10, 15, 15)
    row = instance(engine, "u")
    assert (row.credits_used_month, row.bonus_credits) == (100, 15)
    assert_ledger_replays(engine)


def test_short_balance_is_refused_with_what_remains(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    with pytest.raises(usage.InsufficientCredits) as error:
        usage.consume(engine, "u", 101, "big", now=T0, pol=RESET)
    assert (error.value.remaining, error.value.requested) == (100, 101)
    assert "has 100 credits left, 101 were asked for" in str(error.value)
    assert instance(engine, "u").credits_used_month == 0


def test_replayed_key_returns_the_first_result_and_charges_nothing(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    first = usage.consume(engine, "u", 10, "same", now=T0, pol=RESET)
    again = usage.consume(engine, "u", 10, "same", now=T0 + HOUR, pol=RESET)
    assert again == usage.Consumption("u", 10, 10, 0, 90, replayed=True)
    assert first.credits_remaining == 90
    assert instance(engine, "u").credits_used_month == 10


def test_bad_requests_say_what_is_wrong(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    with pytest.raises(errors.InvalidRequest, match="amount must be a positive integer, got 0"):
        usage.consume(engine, "u", 0, "k", now=T0, pol=RESET)
    with pytest.raises(instances.UnknownInstance, match="instance nobody is not provisioned"):
        usage.consume(engine, "nobody", 1, "k", now=T0, pol=RESET)
    with pytest.raises(errors.InvalidRequest, match="has 0 bonus credits; taking 5 would"):
        usage.adjust_bonus(engine, "u", -5, "oops", now=T0)
    with pytest.raises(errors.InvalidRequest, match="reason must say why"):
        usage.adjust_bonus(engine, "u", 5, "  ", now=T0)


def test_a_due_monthly_reset_applies_before_charging(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.consume(engine, "u", 100, "all", now=T0, pol=RESET)
    result = usage.consume(engine, "u", 5, "next-month", now=T0 + 32 * DAY, pol=RESET)
    assert result.credits_remaining == 95
    assert [h.kind for h in instances.history(engine, "u")][:2] == ["usage", "period_reset"]


def test_concurrent_usage_is_never_lost_to_convergence(engine: Engine) -> None:
    """Threads consume while convergence and plan changes run: no lost update."""
    ids = [f"c{n}" for n in range(6)]
    for name in ids:
        instances.provision(engine, name, now=T0, pol=RESET)
        accept(engine, name, "PaidPlanPurchased", T0, "scale")
    convergence.converge(engine, trigger="timer", actor="timer", now=T0)
    charged = {name: 0 for name in ids}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consumer(worker: int) -> None:
        try:
            for n in range(40):
                name = ids[(worker + n) % len(ids)]
                usage.consume(engine, name, 3, f"w{worker}-{n}", now=T0 + HOUR, pol=RESET)
                with lock:
                    charged[name] += 3
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reconciler() -> None:
        try:
            for n in range(9):  # the scale plan's credits change back and forth
                with database.write(engine) as conn:
                    catalog.upsert(conn, plans.Plan("scale", 25000 + 1000 * (n % 2)), T0)
                convergence.converge(engine, trigger="timer", actor="timer", now=T0 + HOUR,
                                     batch_size=2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=reconciler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    convergence.converge(engine, trigger="timer", actor="timer", now=T0 + HOUR)
    for name in ids:
        row = instance(engine, name)
        assert (row.credits_total, row.credits_used_month) == (25000, charged[name])
    assert_ledger_replays(engine)
