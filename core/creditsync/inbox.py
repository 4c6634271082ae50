"""The webhook inbox: store every verified event durably, then apply it; retry until done.

`store()` commits the event before the caller acknowledges it, deduplicated on its
business identity (instance, event type, operationTimeStamp, product). `process()`
applies it: the subscription changes and the instance converges in one transaction.
A failure leaves the event `pending` with a backoff; after `MAX_ATTEMPTS` it is `failed`.
An unknown product id is `quarantined` until the catalog can resolve it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from creditsync import catalog, convergence, instances, policy, subscriptions
from creditsync.storage import database, models

log = logging.getLogger("creditsync.inbox")
_e = models.WEBHOOK_EVENTS
_i = models.INSTANCES

MAX_ATTEMPTS = 8
STATUSES = ("applied", "duplicate", "stale", "ignored", "quarantined", "failed", "pending")
REPLAYABLE = frozenset({"failed", "quarantined", "pending", "ignored"})


@dataclass(frozen=True)
class Incoming:
    """A verified marketplace event, decoded by the ingress."""

    instance_id: str
    event_type: str
    operation_time: dt.datetime
    product_id: str | None
    expires_at: dt.datetime | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    event_id: str
    status: str


class NotReplayable(ValueError):
    """Replaying an applied event would apply it twice."""


def dedupe_key(event: Incoming) -> str:
    identity = "|".join((event.instance_id, event.event_type,
                         event.operation_time.astimezone(dt.UTC).isoformat(),
                         event.product_id or ""))
    return hashlib.sha256(identity.encode()).hexdigest()


def backoff(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s, ... capped at one hour."""
    return dt.timedelta(seconds=min(5 * 2 ** max(attempts - 1, 0), 3600))


def store(engine: Engine, event: Incoming, now: dt.datetime) -> Receipt:
    """Commit the event to the inbox (or find its duplicate) before it is acknowledged."""
    key = dedupe_key(event)
    status = "pending" if event.event_type in subscriptions.EVENT_TYPES else "ignored"
    event_id = str(uuid.uuid4())
    try:
        with database.write(engine) as conn:
            existing = conn.execute(sa.select(_e.c.id).where(_e.c.dedupe_key == key)).first()
            if existing is not None:
                return Receipt(existing.id, "duplicate")
            conn.execute(_e.insert().values(
                id=event_id, dedupe_key=key, instance_id=event.instance_id,
                event_type=event.event_type, product_id=event.product_id,
                operation_time=event.operation_time, received_at=now, payload=event.payload,
                status=status, attempts=0, next_attempt_at=now))
    except IntegrityError:  # the same event raced in on another connection
        with database.read(engine) as conn:
            return Receipt(conn.execute(sa.select(_e.c.id).where(_e.c.dedupe_key == key))
                           .scalar_one(), "duplicate")
    return Receipt(event_id, status)


def ingest(engine: Engine, event: Incoming, *, now: dt.datetime, pol: policy.Policy) -> Receipt:
    """Store, then apply at once; a failed apply stays `pending` for the retry loop."""
    receipt = store(engine, event, now)
    if receipt.status != "pending":
        return receipt
    return Receipt(receipt.event_id, process(engine, receipt.event_id, now=now, pol=pol))


def process(engine: Engine, event_id: str, *, now: dt.datetime, pol: policy.Policy) -> str:
    """Apply one stored event; returns its status afterwards."""
    try:
        with database.write(engine) as conn:
            query = sa.select(_e).where(_e.c.id == event_id)
            if not database.is_sqlite(conn):
                query = query.with_for_update()
            row = conn.execute(query).one()
            if row.status not in ("pending", "quarantined"):
                return str(row.status)
            status = _apply(conn, row, now, pol)
            conn.execute(_e.update().where(_e.c.id == event_id).values(
                status=status, attempts=_e.c.attempts + 1, last_error=None,
                next_attempt_at=None, applied_at=now if status == "applied" else None))
            return status
    except Exception as exc:
        return _record_failure(engine, event_id, now, exc)


def _apply(
    conn: sa.Connection, row: sa.Row[Any], now: dt.datetime, pol: policy.Policy
) -> str:
    if row.event_type not in subscriptions.EVENT_TYPES:
        return "ignored"
    cat = catalog.load(conn)
    plan_id: str | None = None
    if row.event_type in subscriptions.PLAN_EVENTS:
        plan = cat.resolve(row.product_id or "")
        if plan is None:
            return "quarantined"
        plan_id = plan.id
    if row.event_type in subscriptions.PROVISIONING:
        instances.create_if_missing(conn, row.instance_id, now, "webhook", row.id)
    expires = row.payload.get("expiresOn")
    event = subscriptions.BillingEvent(
        row.instance_id, row.event_type, row.operation_time, plan_id,
        dt.datetime.fromisoformat(expires) if isinstance(expires, str) and expires else None)
    outcome = subscriptions.accept(conn, event, cat.default.id, now)
    exists = conn.execute(sa.select(_i.c.instance_id).where(_i.c.instance_id == row.instance_id))
    if outcome == "applied" and exists.first() is not None:
        convergence.converge_in(conn, [row.instance_id], trigger="webhook", actor="webhook",
                                correlation_id=row.id, now=now, pol=pol)
    return outcome


def _record_failure(engine: Engine, event_id: str, now: dt.datetime, exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    log.warning("webhook %s failed to apply: %s", event_id, error,
                extra={"event_id": event_id, "error": error})
    try:
        with database.write(engine) as conn:
            attempts = conn.execute(sa.select(_e.c.attempts).where(_e.c.id == event_id)
                                    ).scalar_one() + 1
            status = "failed" if attempts >= MAX_ATTEMPTS else "pending"
            conn.execute(_e.update().where(_e.c.id == event_id).values(
                status=status, attempts=attempts, last_error=error,
                next_attempt_at=None if status == "failed" else now + backoff(attempts)))
            return status
    except Exception:  # the database is gone: the event is stored, the loop retries it
        log.exception("could not record the failure of webhook %s", event_id)
        return "pending"


def retry_due(
    engine: Engine, *, now: dt.datetime, pol: policy.Policy, limit: int = 500
) -> dict[str, int]:
    """Retry pending events whose backoff passed, and quarantined ones the catalog resolves."""
    with database.read(engine) as conn:
        known = {name for plan in catalog.read_plans(conn) for name in (plan.id, *plan.aliases)}
        due = conn.execute(
            sa.select(_e.c.id, _e.c.status, _e.c.product_id)
            .where(sa.or_(
                sa.and_(_e.c.status == "pending", _e.c.next_attempt_at <= now),
                _e.c.status == "quarantined"))
            .order_by(_e.c.operation_time).limit(limit)
        ).all()
    outcomes: dict[str, int] = {}
    for row in due:
        if row.status == "quarantined" and row.product_id not in known:
            continue
        status = process(engine, row.id, now=now, pol=pol)
        outcomes[status] = outcomes.get(status, 0) + 1
    return outcomes


def replay(engine: Engine, event_id: str, *, now: dt.datetime, pol: policy.Policy) -> str:
    """Apply a failed, quarantined, pending or ignored event again (admin action)."""
    with database.write(engine) as conn:
        row = conn.execute(sa.select(_e.c.status).where(_e.c.id == event_id)).first()
        if row is None:
            raise LookupError(f"no webhook event {event_id}")
        if row.status not in REPLAYABLE:
            raise NotReplayable(
                f"event {event_id} is {row.status}; only failed, quarantined, pending or "
                "ignored events can be replayed"
            )
        conn.execute(_e.update().where(_e.c.id == event_id).values(
            status="pending", attempts=0, next_attempt_at=now, last_error=None))
    return process(engine, event_id, now=now, pol=pol)


def counts(engine: Engine) -> dict[str, int]:
    """Events by status (the backlog is pending + quarantined + failed)."""
    with database.read(engine) as conn:
        rows = conn.execute(sa.select(_e.c.status, sa.func.count()).group_by(_e.c.status))
        found = {str(status): int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in STATUSES}
