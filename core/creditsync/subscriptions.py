"""Desired state: how an accepted billing event changes an instance's subscription.

`write()` is the only writer of the `subscriptions` table, and refuses to go backwards in
`source_time`: an event older than the newest one accepted is `stale`, so reordered
deliveries never override newer ones. `next_state()` bumps `rev` only for a purchase or a
change of plan, so a retry never resets usage twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from creditsync import enums, errors
from creditsync.storage import models

Status = enums.EventStatus

_s = models.SUBSCRIPTIONS

PURCHASES = frozenset({"PaidPlanPurchased", "PaidPlanChanged"})
# Events that confirm the plan the instance is on (no new purchase): a rev bump only
# when the plan differs from the one recorded (so a missed purchase still lands).
CONFIRMATIONS = frozenset({"PlanConvertedToPaid", "PlanReactivated", "PlanTransferred"})
CANCELLATION = "PaidPlanAutoRenewalCancelled"
INSTALLED = "AppInstalled"
REMOVED = "AppRemoved"
PLAN_EVENTS = PURCHASES | CONFIRMATIONS | {CANCELLATION}
EVENT_TYPES = PLAN_EVENTS | {INSTALLED, REMOVED}
# An install, or a purchase (only an installed app can be bought): the instance exists after
PROVISIONING = PURCHASES | {INSTALLED}

Outcome = Literal[Status.APPLIED, Status.STALE]


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


def get(conn: Connection, instance_id: str) -> State | None:
    """The instance's subscription."""
    row = conn.execute(sa.select(_s).where(_s.c.instance_id == instance_id)).first()
    if row is None:
        return None
    return State(row.plan_id, row.status, row.expires_at, row.rev, row.source_time)


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
    if event.event_type == REMOVED:
        plan = current.plan_id if current else default_plan_id
        return State(plan, "removed", current.expires_at if current else None, rev, at)
    if event.event_type == INSTALLED:
        if current is None or current.status != "removed":
            return None
        # reinstalled: data comes back, a paid plan only with a new purchase
        return State(default_plan_id, "active", None, rev, at)
    raise errors.InvalidRequest(f"unknown event type {event.event_type}")


def write(conn: Connection, instance_id: str, state: State, now: dt.datetime) -> bool:
    """Upsert the instance's subscription; refused (False) if a newer event is stored.

    The guard is in the statement itself, so desired state never goes backwards in
    `source_time`, whatever the caller read.
    """
    values = {"plan_id": state.plan_id, "status": state.status, "expires_at": state.expires_at,
              "rev": state.rev, "source_time": state.source_time, "updated_at": now}
    insert = (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(_s)
    statement = insert.values(instance_id=instance_id, **values)
    statement = statement.on_conflict_do_update(
        index_elements=[_s.c.instance_id],
        set_={name: statement.excluded[name] for name in values},
        where=_s.c.source_time <= statement.excluded.source_time)
    return conn.execute(statement.returning(_s.c.instance_id)).first() is not None


def accept(
    conn: Connection, event: BillingEvent, default_plan_id: str, now: dt.datetime
) -> Outcome:
    """Apply `event` to the instance's subscription unless a newer event was accepted.

    The caller holds the instance's lock (`database.lock_instance`).
    """
    current = get(conn, event.instance_id)
    if current is not None and event.operation_time < current.source_time:
        return Status.STALE
    new = next_state(current, event, default_plan_id)
    if new is None:
        return Status.APPLIED
    return Status.APPLIED if write(conn, event.instance_id, new, now) else Status.STALE
