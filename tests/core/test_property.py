"""Property: for any sequence of billing deliveries (duplicates and reordering included),
usage and clock advances, the converged state equals a small reference model, converging
twice changes nothing, a duplicate or stale delivery changes nothing, and replaying the
ledger reproduces every instance's numbers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from creditsync import convergence, inbox, instances, plans, usage
from tests.core.helpers import DAY, HOUR, RESET, instance
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

CREDITS = {p.id: p.monthly_credits for p in plans.DEFAULT_CATALOG.plans}
PAID = ["starter", "pro", "scale"]
PLAN_TYPES = ["PaidPlanPurchased", "PaidPlanChanged", "PlanConvertedToPaid", "PlanReactivated",
              "PlanTransferred", "PaidPlanAutoRenewalCancelled"]


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    at: dt.datetime
    plan: str | None
    expires: dt.datetime | None


events = st.builds(
    lambda kind, hours, plan, days: Event(
        kind, T0 + hours * HOUR, None if kind in ("AppRemoved", "AppInstalled") else plan,
        T0 + hours * HOUR + days * DAY if kind == "PaidPlanAutoRenewalCancelled" else None),
    st.sampled_from([*PLAN_TYPES, "AppRemoved", "AppInstalled"]),
    st.integers(0, 60), st.sampled_from(PAID), st.integers(1, 20),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 5)),
        st.tuples(st.just("advance"), st.integers(1, 24 * 20)),
        st.tuples(st.just("consume"), st.integers(1, 150)),
        st.tuples(st.just("converge"), st.just(0)),
    ),
    min_size=1, max_size=14,
)


def reference_plan(accepted: list[Event], now: dt.datetime) -> str:
    """The desired plan from the accepted events alone (newest last)."""
    plan, expires, removed = "free", None, False
    for ev in accepted:
        if ev.kind == "AppRemoved":
            removed = True
        elif ev.kind == "AppInstalled":
            if removed:
                plan, expires, removed = "free", None, False
        elif ev.kind == "PaidPlanAutoRenewalCancelled":
            plan, expires, removed = ev.plan or plan, ev.expires, False
        else:
            plan, expires, removed = ev.plan or plan, None, False
    if removed or (expires is not None and now >= expires):
        return "free"
    return plan


def removed(accepted: list[Event]) -> bool:
    """Whether the app is uninstalled: every other accepted event means it is installed."""
    return bool(accepted) and accepted[-1].kind == "AppRemoved"


_ids = itertools.count()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pool=st.lists(events, min_size=1, max_size=6), steps=actions)
def test_convergence_matches_the_reference_model(
    engine: Engine, pool: list[Event], steps: list[tuple[str, int]]
) -> None:
    name = f"p{next(_ids)}-{uuid.uuid4().hex[:6]}"
    now = T0
    instances.provision(engine, name, now=now, pol=RESET)
    accepted: list[Event] = []
    newest: dt.datetime | None = None
    for action, arg in steps:
        if action == "deliver":
            ev = pool[arg % len(pool)]
            before = instance(engine, name)
            receipt = inbox.ingest(engine, inbox.Incoming(
                name, ev.kind, ev.at, ev.plan, ev.expires,
                {"expiresOn": ev.expires.isoformat()} if ev.expires else {}), now=now, pol=RESET)
            if receipt.status in ("duplicate", "stale"):
                after = instance(engine, name)
                assert (after.plan_id, after.credits_total, after.credits_used_month) == (
                    before.plan_id, before.credits_total, before.credits_used_month)
            else:
                assert receipt.status == "applied"
                # an install only changes desired state when it follows a removal; otherwise
                # it records nothing, so it neither needs to be newest nor becomes newest
                if ev.kind != "AppInstalled" or removed(accepted):
                    assert newest is None or ev.at >= newest
                    newest = ev.at
                accepted.append(ev)
        elif action == "advance":
            now += arg * HOUR
        elif action == "consume":
            refused: usage.InsufficientCredits | None = None
            try:
                usage.consume(engine, name, arg, uuid.uuid4().hex, now=now, pol=RESET)
            except usage.InsufficientCredits as exc:
                refused = exc
            assert refused is None or refused.remaining < arg
        else:
            convergence.converge(engine, trigger="timer", actor="timer", now=now,
                                 instance_ids=[name])
    convergence.converge(engine, trigger="timer", actor="timer", now=now, instance_ids=[name])
    row = instance(engine, name)
    want = reference_plan(accepted, now)
    assert (row.plan_id, row.credits_total) == (want, CREDITS[want])
    assert row.period_start <= now < row.period_end
    assert row.credits_used_month >= 0
    again = convergence.converge(engine, trigger="timer", actor="timer", now=now,
                                 instance_ids=[name])
    assert again.repaired == 0
    assert_ledger_replays(engine)
