"""`credits.low` thresholds: parsed with clear errors, sent once per threshold per period,
re-armed by a reset or a top-up; random consumes, top-ups and resets against a model."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from creditsync import (
    config,
    convergence,
    enums,
    errors,
    instances,
    policy,
    policy_store,
    thresholds,
    usage,
)
from creditsync.storage import database, models
from tests.core.helpers import HOUR, RESET
from tests.support.times import T0

_o = models.OUTBOX
_ids = itertools.count()


def test_thresholds_parse_to_basis_points_highest_first() -> None:
    assert thresholds.parse("20%,5%") == (2000, 500)
    assert thresholds.parse(" 5, 2.5% ,50%") == (5000, 500, 250)
    assert thresholds.parse("none") == thresholds.parse("") == ()
    assert thresholds.text_of((5000, 250)) == "50%,2.5%"
    assert thresholds.text_of(()) == "none"
    assert config.from_env({}).low_credit_thresholds == (2000, 500)
    assert config.from_env({"CREDITSYNC_LOW_CREDIT_THRESHOLDS": "10%"}).low_credit_thresholds \
        == (1000,)


@pytest.mark.parametrize("bad", ["0%", "100%", "20%%", "abc", "20%,", "-5%", "1.234%"])
def test_bad_thresholds_say_what_to_write(bad: str) -> None:
    with pytest.raises(errors.ConfigError,
                       match=r"CREDITSYNC_LOW_CREDIT_THRESHOLDS=.*is not a percentage between "
                             r"0 and 100 \(exclusive\); use a comma-separated list such as "
                             r"20%,5%"):
        config.from_env({"CREDITSYNC_LOW_CREDIT_THRESHOLDS": bad})


def low_events(engine: Engine, instance_id: str) -> list[tuple[str, Any]]:
    with database.read(engine) as conn:
        return [(r.type, r.payload["data"].get("threshold")) for r in conn.execute(
            sa.select(_o).where(_o.c.instance_id == instance_id).order_by(_o.c.seq))]


def test_a_top_up_above_a_threshold_arms_it_again(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.consume(engine, "u", 85, "a", now=T0, pol=RESET)  # 15 left: 20% sent
    usage.consume(engine, "u", 1, "b", now=T0, pol=RESET)  # still below: nothing
    usage.adjust_bonus(engine, "u", 3, "not enough to re-arm", now=T0)  # 17
    usage.consume(engine, "u", 1, "c", now=T0, pol=RESET)
    usage.adjust_bonus(engine, "u", 10, "top-up", now=T0)  # 26: above 20 again
    usage.consume(engine, "u", 7, "d", now=T0, pol=RESET)  # 19: 20% again
    assert low_events(engine, "u") == [("credits.low", 20), ("credits.low", 20)]


def test_the_stored_thresholds_are_the_ones_a_consume_uses(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    with database.write(engine) as conn:
        policy_store.write(conn, policy.Policy(low_credit_thresholds=(5000,)), "test", T0)
    usage.consume(engine, "u", 50, "a", now=T0)  # no `pol`: the stored one
    assert low_events(engine, "u") == [("credits.low", 50)]


# one step: ("consume", n) | ("top_up", n) | ("reset", 0)
steps = st.lists(st.tuples(st.sampled_from(["consume", "consume", "consume", "top_up", "reset"]),
                           st.integers(1, 40)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=steps)
def test_thresholds_fire_once_per_period_like_the_model(
    engine: Engine, sequence: list[tuple[str, int]],
) -> None:
    instance_id = f"m{next(_ids)}"
    instances.provision(engine, instance_id, now=T0, pol=RESET)
    pol = policy.Policy(low_credit_thresholds=(2000, 500))
    allocation, used, bonus = 100, 0, 0
    armed = {20: True, 5: True}
    expected: list[tuple[str, Any]] = []
    now = T0
    for n, (step, amount) in enumerate(sequence):
        now += HOUR
        left = max(allocation - used, 0) + bonus
        if step == "consume":
            if amount > left:
                with pytest.raises(usage.InsufficientCredits):
                    usage.consume(engine, instance_id, amount, f"k{n}", now=now, pol=pol)
                continue
            usage.consume(engine, instance_id, amount, f"k{n}", now=now, pol=pol)
            from_plan = min(amount, max(allocation - used, 0))
            used, bonus = used + from_plan, bonus - (amount - from_plan)
            after = left - amount
            for percent in (20, 5):  # the model: sent once, until armed again
                if armed[percent] and after * 100 <= percent * allocation:
                    expected.append(("credits.low", percent))
                    armed[percent] = False
            if after == 0:
                expected.append(("credits.depleted", None))
        elif step == "top_up":
            usage.adjust_bonus(engine, instance_id, amount, "top-up", now=now)
            bonus += amount
        else:
            row = instances_row(engine, instance_id)
            now = row.period_end + dt.timedelta(minutes=1)
            convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER,
                                 instance_ids=[instance_id], now=now, pol=pol)
            used = 0
            expected.append(("credits.reset", None))
            armed = {20: True, 5: True}
        left = max(allocation - used, 0) + bonus
        for percent in (20, 5):  # a balance back above a threshold arms it again
            if left * 100 > percent * allocation:
                armed[percent] = True
    assert low_events(engine, instance_id) == expected


def instances_row(engine: Engine, instance_id: str) -> sa.Row[Any]:
    with database.read(engine) as conn:
        return conn.execute(sa.select(models.INSTANCES).where(
            models.INSTANCES.c.instance_id == instance_id)).one()
