"""Desired state: how an accepted billing event changes an instance's subscription (pure).

`next_state()` bumps `rev` only for a purchase or a change of plan, so a retry never resets
usage twice; an event older than the newest one accepted is `stale` (decided by
`decision.decide`, and refused again by `subscription_store.write`). Reading and writing
the `subscriptions` table is in `subscription_store`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from creditsync import enums, errors

Status = enums.EventStatus

PURCHASES = frozenset({"PaidPlanPurchased", "PaidPlanChanged"})
# Events that confirm the plan the instance is on (no new purchase): a rev bump only
# when the plan differs from the one recorded (so a missed purchase still lands).
CONFIRMATIONS = frozenset({"PlanConvertedToPaid", "PlanReactivated", "PlanTransferred"})
CANCELLATION = "PaidPlanAutoRenewalCancelled"
INSTALLED = "AppInstalled"
REMOVED = "AppRemoved"
PLAN_EVENTS = PURCHASES | CONFIRMATIONS | {CANCELLATION}
# What the marketplace's own API said at a time (`marketplace.Observation`): a paid package
# (resolved like a plan event's product) or free (no product)
SNAPSHOT = "MarketplaceSnapshot"
EVENT_TYPES = PLAN_EVENTS | {INSTALLED, REMOVED, SNAPSHOT}
# An install, or a purchase (only an installed app can be bought): the instance exists after
PROVISIONING = PURCHASES | {INSTALLED}



@dataclass(frozen=True)
class BillingEvent:
    """A marketplace event reduced to what desired state needs (plan already resolved)."""

    instance_id: str
    event_type: str
    operation_time: dt.datetime
    plan_id: str | None = None  # resolved from vendorProductId; None for install/remove
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class State:
    plan_id: str
    status: str
    expires_at: dt.datetime | None
    rev: int
    source_time: dt.datetime


def next_state(current: State | None, event: BillingEvent, default_plan_id: str) -> State | None:
    """The subscription after `event`; None when the event changes nothing."""
    at = event.operation_time
    rev = current.rev if current else 0
    if event.event_type in PURCHASES or event.event_type in CONFIRMATIONS:
        assert event.plan_id is not None
        bump = (
            event.event_type in PURCHASES or current is None
            or current.plan_id != event.plan_id or current.status == "removed"
        )
        return State(event.plan_id, "active", None, rev + 1 if bump else rev, at)
    if event.event_type == CANCELLATION:
        assert event.plan_id is not None
        if current is None or current.plan_id != event.plan_id or current.status == "removed":
            # the purchase was missed: the cancellation still says what was paid for
            return State(event.plan_id, "cancelled", event.expires_at, rev + 1, at)
        return State(current.plan_id, "cancelled", event.expires_at, rev, at)
    if event.event_type == SNAPSHOT:
        return _snapshot(current, event, default_plan_id)
    if event.event_type == REMOVED:
        plan = current.plan_id if current else default_plan_id
        return State(plan, "removed", current.expires_at if current else None, rev, at)
    if event.event_type == INSTALLED:
        if current is None or current.status != "removed":
            return None
        # reinstalled: data comes back, a paid plan only with a new purchase
        return State(default_plan_id, "active", None, rev, at)
    raise errors.InvalidRequest(f"unknown event type {event.event_type}")


def _snapshot(
    current: State | None, event: BillingEvent, default_plan_id: str
) -> State | None:
    """The marketplace's view at `event.operation_time`, newer than every event before it.

    A paid package that differs from the recorded plan is the purchase or change that was
    missed (a rev bump: the usage policy applies); the same plan only refreshes the time (a
    cancellation stays one until its recorded end; still paid after it, it was renewed).
    Free moves an installed instance to the default plan without a
    rev bump, so usage is untouched; an uninstalled one stays as it is.
    """
    at = event.operation_time
    rev = current.rev if current else 0
    if event.plan_id is not None:
        if current is None or current.plan_id != event.plan_id or current.status == "removed":
            return State(event.plan_id, "active", None, rev + 1, at)
        if (current.status == "cancelled" and current.expires_at is not None
                and current.expires_at > at):
            return State(current.plan_id, "cancelled", current.expires_at, rev, at)
        # still paid past the end we recorded: renewed after all (a missed reactivation)
        return State(current.plan_id, "active", None, rev, at)
    if current is None or current.status == "removed":
        return None
    if current.plan_id == default_plan_id and current.status == "active":
        return None
    return State(default_plan_id, "active", None, rev, at)
