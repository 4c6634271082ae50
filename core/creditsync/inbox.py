"""The webhook inbox: store every verified event durably, then apply it; retry until done.

`store()` commits the event before the caller acknowledges it, deduplicated on its
business identity (instance, event type, operationTimeStamp, product). `process()`
applies it in one transaction holding the instance's lock: it reads the subscription,
the instance, the catalog and the policy, asks `decision.decide()` what the event does,
and writes that (`write_decision`). The async path on PostgreSQL (`storage.inbox_pg`)
reads and writes the same rows its own way around the same `decide()`.
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

from creditsync import (
    catalog,
    convergence,
    decision,
    enums,
    errors,
    events,
    instances,
    ledger,
    policy,
    policy_store,
    subscription_store,
    subscriptions,
)
from creditsync.storage import database, grant_rows, models

Status = enums.EventStatus

log = logging.getLogger("creditsync.inbox")
_e = models.WEBHOOK_EVENTS
_i = models.INSTANCES
_ledger = models.LEDGER

MAX_ATTEMPTS = 8
STATUSES = tuple(enums.EventStatus)
REPLAYABLE = enums.REPLAYABLE
APPLICABLE = enums.APPLICABLE


@dataclass(frozen=True)
class Incoming(decision.Event):
    """A verified marketplace event, decoded by the ingress: what a decision reads, and the
    event's own fields as the marketplace sent them (stored, shown to admins)."""

    payload: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    event_id: str
    status: str


NotReplayable = errors.NotReplayable


def dedupe_key(event: Incoming) -> str:
    identity = "|".join((event.instance_id, event.event_type,
                         event.operation_time.astimezone(dt.UTC).isoformat(),
                         event.product_id or ""))
    return hashlib.sha256(identity.encode()).hexdigest()


def first_status(event: Incoming) -> str:
    """`pending` until applied; `ignored` at once for an event type nobody acts on."""
    return Status.PENDING if event.event_type in subscriptions.EVENT_TYPES else Status.IGNORED


def backoff(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s, ... capped at one hour."""
    return dt.timedelta(seconds=min(5 * 2 ** max(attempts - 1, 0), 3600))


def store(engine: Engine, event: Incoming, now: dt.datetime) -> Receipt:
    """Commit the event to the inbox (or find its duplicate) before it is acknowledged."""
    key = dedupe_key(event)
    status = first_status(event)
    event_id = str(uuid.uuid4())
    try:
        with database.write(engine) as conn:
            existing = conn.execute(sa.select(_e.c.id).where(_e.c.dedupe_key == key)).first()
            if existing is not None:
                return Receipt(existing.id, Status.DUPLICATE)
            conn.execute(_e.insert().values(
                id=event_id, dedupe_key=key, instance_id=event.instance_id,
                event_type=event.event_type, product_id=event.product_id,
                operation_time=event.operation_time, expires_at=event.expires_at,
                received_at=now, payload=event.payload,
                status=status, attempts=0, next_attempt_at=now))
    except IntegrityError:  # the same event raced in on another connection
        with database.read(engine) as conn:
            return Receipt(conn.execute(sa.select(_e.c.id).where(_e.c.dedupe_key == key))
                           .scalar_one(), Status.DUPLICATE)
    return Receipt(event_id, status)


def ingest(
    engine: Engine, event: Incoming, *, now: dt.datetime, pol: policy.Policy | None = None
) -> Receipt:
    """Store, then apply at once; a failed apply stays `pending` for the retry loop."""
    receipt = store(engine, event, now)
    if receipt.status != Status.PENDING:
        return receipt
    return Receipt(receipt.event_id, process(engine, receipt.event_id, now=now, pol=pol))


def process(
    engine: Engine, event_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> str:
    """Apply one stored event; returns its status afterwards.

    `pol` None: the stored policy (`policy_store`), read in the same transaction.
    """
    try:
        with database.write(engine) as conn:
            instance_id = conn.execute(
                sa.select(_e.c.instance_id).where(_e.c.id == event_id)).scalar()
            if instance_id is None:
                raise errors.NotFound(f"no webhook event {event_id}")
            # the instance's lock before anything is read (the same order as the async path)
            database.lock_instance(conn, instance_id)
            query = sa.select(_e).where(_e.c.id == event_id)
            if not database.is_sqlite(conn):
                query = query.with_for_update()
            row = conn.execute(query).one()
            if row.status not in APPLICABLE:
                return str(row.status)
            found = instances.read_numbers(conn, row.instance_id)
            made = decision.decide(
                decision.Event(row.instance_id, row.event_type, row.operation_time,
                               row.product_id, row.expires_at),
                subscription_store.get(conn, row.instance_id),
                found[0] if found else None, catalog.load(conn), now,
                pol if pol is not None else policy_store.load(conn))
            status = write_decision(conn, row.instance_id, made, found[1] if found else None,
                                    now=now, actor=enums.Actor.WEBHOOK, correlation_id=event_id)
            conn.execute(_e.update().where(_e.c.id == event_id).values(
                status=status, attempts=_e.c.attempts + 1, last_error=None,
                next_attempt_at=None, applied_at=now if status == Status.APPLIED else None))
            return status
    except errors.NotFound:
        raise
    except Exception as exc:
        return _record_failure(engine, event_id, now, exc)


def write_decision(
    conn: sa.Connection, instance_id: str, made: decision.Decision, version: int | None, *,
    now: dt.datetime, actor: policy.Actor, correlation_id: str,
) -> str:
    """Carry out `made` inside the caller's locked transaction; returns the final status.

    The subscription is written first: when its guard refuses (a newer event is stored)
    the event is `stale` and the instance is left as it was (a missing one still created).
    """
    status, steps = made.status, made.steps
    if made.subscription is not None and not subscription_store.write(
            conn, instance_id, made.subscription, now):
        status, steps = Status.STALE, ()
    rows: list[dict[str, Any]] = []
    if made.created is not None:
        rows.append(ledger.provision_entry(instance_id, made.created, at=now, actor=actor,
                                           correlation_id=correlation_id))
    made_grants: list[dict[str, Any]] = []  # rollover grants at a monthly reset
    for step in steps:
        if step.kind == enums.LedgerKind.ROLLOVER:
            made_grants.append(grant_rows.rollover_row(instance_id, step, now))
        rows.append(ledger.step_entry(
            instance_id, step, at=now, actor=actor, correlation_id=correlation_id,
            grant_id=made_grants[-1]["id"] if step.kind == enums.LedgerKind.ROLLOVER else None))
    final = steps[-1].after if steps else made.created
    if made.created is not None:
        assert final is not None
        conn.execute(_i.insert().values(
            instance_id=instance_id, **instances.number_columns(final), bonus_credits=0,
            version=1 if steps else 0, created_at=now, updated_at=now, last_synced_at=now))
    elif version is not None:
        values: dict[str, Any] = {"last_synced_at": now}
        if steps:
            assert final is not None
            values |= {**instances.number_columns(final), "version": version + 1,
                       "bonus_credits": final.bonus_credits, "updated_at": now}
        written = conn.execute(_i.update().where(
            _i.c.instance_id == instance_id, _i.c.version == version).values(**values))
        if written.rowcount != 1:  # the lock makes this impossible; never write blind
            raise RuntimeError(f"instance {instance_id} changed while it was locked")
    ledger_ids: dict[tuple[str, str], int] = {}
    if rows:
        written_rows = conn.execute(_ledger.insert().returning(
            _ledger.c.id, _ledger.c.kind, sort_by_parameter_order=True), rows)
        ledger_ids = {(instance_id, kind): ledger_id for ledger_id, kind in written_rows}
    if made_grants:
        conn.execute(models.GRANTS.insert(), made_grants)
    if steps:
        change = policy.Change(instance_id, steps)
        events.after_changes(conn, [change], ledger_ids, now=now)
        convergence.log_change(change, dry_run=False)
    return status


def _record_failure(engine: Engine, event_id: str, now: dt.datetime, exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    log.warning("webhook %s failed to apply: %s", event_id, error,
                extra={"event_id": event_id, "error": error})
    try:
        with database.write(engine) as conn:
            attempts = conn.execute(sa.select(_e.c.attempts).where(_e.c.id == event_id)
                                    ).scalar_one() + 1
            status = Status.FAILED if attempts >= MAX_ATTEMPTS else Status.PENDING
            conn.execute(_e.update().where(_e.c.id == event_id).values(
                status=status, attempts=attempts, last_error=error,
                next_attempt_at=None if status == Status.FAILED else now + backoff(attempts)))
            return status
    except Exception:  # the database is gone: the event is stored, the loop retries it
        log.warning("could not record the failure of webhook %s; the retry loop will apply "
                    "it", event_id, extra={"event_id": event_id})
        return Status.PENDING


def due(conn: sa.Connection, now: dt.datetime, limit: int) -> list[str]:
    """Events the retry loop can apply now: due pending ones, resolvable quarantined ones.

    Each kind is selected on its own, in SQL, so a backlog of one (e.g. thousands of
    quarantined events for a product nobody added) never keeps the other waiting.
    """
    known = sorted({name for plan in catalog.read_plans(conn)
                    for name in (plan.id, *plan.aliases)})
    pending = conn.execute(
        sa.select(_e.c.id, _e.c.operation_time)
        .where(_e.c.status == Status.PENDING, _e.c.next_attempt_at <= now)
        .order_by(_e.c.next_attempt_at).limit(limit)).all()
    quarantined = conn.execute(
        sa.select(_e.c.id, _e.c.operation_time)
        .where(_e.c.status == Status.QUARANTINED, _e.c.product_id.in_(known))
        .order_by(_e.c.operation_time).limit(limit)).all() if known else []
    # oldest first across both kinds, so an instance's events apply in their own order
    return [row.id for row in sorted([*pending, *quarantined], key=lambda r: r.operation_time)]


def retry_due(
    engine: Engine, *, now: dt.datetime, pol: policy.Policy | None = None, limit: int = 500
) -> dict[str, int]:
    """Retry pending events whose backoff passed, and quarantined ones the catalog resolves."""
    with database.read(engine) as conn:
        ids = due(conn, now, limit)
    outcomes: dict[str, int] = {}
    for event_id in ids:
        status = process(engine, event_id, now=now, pol=pol)
        outcomes[status] = outcomes.get(status, 0) + 1
    return outcomes


def replay(
    engine: Engine, event_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> str:
    """Apply a failed, quarantined, pending or ignored event again (admin action)."""
    with database.write(engine) as conn:
        row = conn.execute(sa.select(_e.c.status).where(_e.c.id == event_id)).first()
        if row is None:
            raise errors.NotFound(f"no webhook event {event_id}: list them with GET "
                                  "/api/admin/webhooks", code="event_not_found")
        if row.status not in REPLAYABLE:
            raise NotReplayable(
                f"event {event_id} is {row.status}; only failed, quarantined, pending or "
                "ignored events can be replayed"
            )
        conn.execute(_e.update().where(_e.c.id == event_id).values(
            status=Status.PENDING, attempts=0, next_attempt_at=now, last_error=None))
    return process(engine, event_id, now=now, pol=pol)


def counts(engine: Engine) -> dict[str, int]:
    """Events by status (the backlog is pending + quarantined + failed)."""
    with database.read(engine) as conn:
        rows = conn.execute(sa.select(_e.c.status, sa.func.count()).group_by(_e.c.status))
        found = {str(status): int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in STATUSES}
