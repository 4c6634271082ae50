"""The `subscriptions` table: desired state, one row per instance, written only by ingress.

`write()` is the only writer, and refuses to go backwards in `source_time`, so reordered
deliveries never override newer ones whatever the caller read.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from creditsync import changes, enums, subscriptions
from creditsync.storage import models

Status = enums.EventStatus
Outcome = Literal[Status.APPLIED, Status.STALE]

_s = models.SUBSCRIPTIONS


def get(conn: Connection, instance_id: str) -> subscriptions.State | None:
    """The instance's subscription."""
    row = conn.execute(sa.select(_s).where(_s.c.instance_id == instance_id)).first()
    if row is None:
        return None
    return subscriptions.State(row.plan_id, row.status, row.expires_at, row.rev, row.source_time)


def write(conn: Connection, instance_id: str, state: subscriptions.State, now: dt.datetime) -> bool:
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
    conn: Connection, event: subscriptions.BillingEvent, default_plan_id: str, now: dt.datetime
) -> Outcome:
    """Apply `event` to the instance's subscription unless a newer event was accepted.

    The caller holds the instance's lock (`database.lock_instance`). Unlike the webhook
    path, nothing here converges the instance: it is queued for the next tick.
    """
    current = get(conn, event.instance_id)
    if current is not None and event.operation_time < current.source_time:
        return Status.STALE
    new = subscriptions.next_state(current, event, default_plan_id)
    if new is None:
        return Status.APPLIED
    if not write(conn, event.instance_id, new, now):
        return Status.STALE
    changes.enqueue(conn, [event.instance_id], now)
    return Status.APPLIED
