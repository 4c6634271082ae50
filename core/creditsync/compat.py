"""The original system's entry points, as thin wrappers over `convergence.converge`.

Kept so that callers ported from the Node backend read the same: `syncInstanceCredits`,
`syncAllInstanceCredits`, `updateInstancePlan`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from creditsync import (
    catalog,
    clock,
    convergence,
    enums,
    errors,
    policy,
    subscription_store,
    subscriptions,
)
from creditsync.storage import database


def sync_instance_credits(
    engine: Engine, instance_id: str, pol: policy.Policy | None = None
) -> convergence.Summary:
    """Converge one instance now (the "Sync Credits" button)."""
    return convergence.converge(engine, trigger="manual", actor=enums.Actor.MANUAL,
                                instance_ids=[instance_id], pol=pol)


def sync_all_instance_credits(engine: Engine, pol: policy.Policy | None = None) -> int:
    """Converge every instance; returns how many were repaired."""
    return convergence.converge(engine, trigger="cli", actor=enums.Actor.CLI, pol=pol).repaired


def update_instance_plan(
    engine: Engine, instance_id: str, plan_id: str, event_time: dt.datetime,
    pol: policy.Policy | None = None,
) -> str:
    """Record a purchase of `plan_id` at `event_time` and converge the instance.

    Returns `applied`, or `stale` when a newer event was already accepted.
    """
    now = clock.utcnow()
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        cat = catalog.load(conn)
        plan = cat.resolve(plan_id)
        if plan is None:
            raise errors.NotFound(f"unknown plan {plan_id}: known plans are "
                                  + ", ".join(p.id for p in cat.plans))
        event = subscriptions.BillingEvent(instance_id, "PaidPlanChanged", event_time, plan.id)
        outcome = subscription_store.accept(conn, event, cat.default.id, now)
        if outcome == enums.EventStatus.APPLIED:
            convergence.converge_in(conn, [instance_id], trigger="manual", actor=enums.Actor.MANUAL,
                                    correlation_id=f"plan:{instance_id}:{event_time.isoformat()}",
                                    now=now, pol=pol)
    return outcome


