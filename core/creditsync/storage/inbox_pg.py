"""The inbox's single-event path on PostgreSQL, for the webhook endpoint: async, few round trips.

Same contract as `inbox.store` and `inbox.process` (the blocking path, which the retry
loop, replays and SQLite use): the event is committed to the inbox (deduplicated on its
business identity) before it is acknowledged, then applied in a second transaction. That
transaction takes the instance's advisory lock first (`database.INSTANCE_LOCK_SQL`, as every
path deciding for one instance does), reads the event, subscription, instance, catalog and
policy in one statement, asks the same pure `decision.decide()`, and writes its answer in
one statement (its ledger rows and their events to the app included). This module only
reads and writes rows, on psycopg's async pool with pipelined statements; a property test
checks both paths give the same results.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Json, Jsonb
from psycopg_pool import AsyncConnectionPool

from creditsync import (
    convergence,
    decision,
    enums,
    errors,
    events,
    inbox,
    ledger,
    outbox,
    plans,
    policy,
    subscriptions,
)
from creditsync.storage import database, grant_rows

Status = enums.EventStatus

log = logging.getLogger("creditsync.inbox")

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_STORE = """
WITH new AS (
    INSERT INTO webhook_events (id, dedupe_key, instance_id, event_type, product_id,
        operation_time, expires_at, received_at, payload, status, attempts, next_attempt_at)
    VALUES (%(id)s, %(key)s, %(instance_id)s, %(event_type)s, %(product_id)s,
        %(operation_time)s, %(expires_at)s, %(now)s, %(payload)s, %(status)s, 0, %(now)s)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id
)
SELECT id, true FROM new
UNION ALL
SELECT id, false FROM webhook_events WHERE dedupe_key = %(key)s
LIMIT 1
"""
_EXISTING = "SELECT id FROM webhook_events WHERE dedupe_key = %s"

# The instance's lock, taken before anything is read: the read that follows (its own
# statement, so its own snapshot) sees what the lock's previous holder committed.
_LOCK = ("SELECT pg_advisory_xact_lock(hashtextextended(instance_id, 0)) "
         "FROM webhook_events WHERE id = %(id)s")
assert "hashtextextended(" in database.INSTANCE_LOCK_SQL  # the same key as lock_instance
# Everything an apply decides from, in one statement: the event, its subscription and
# instance (rows locked), the catalog and the policy.
_READ = """
WITH ev AS (
    SELECT instance_id, event_type, product_id, operation_time, expires_at, status
    FROM webhook_events WHERE id = %(id)s FOR UPDATE
), sub AS (
    SELECT plan_id, status, expires_at, rev, source_time FROM subscriptions
    WHERE instance_id = (SELECT instance_id FROM ev) FOR UPDATE
), inst AS (
    SELECT plan_id, credits_total, credits_used_month, bonus_credits, period_start,
        period_end, applied_rev, version FROM instances
    WHERE instance_id = (SELECT instance_id FROM ev) FOR UPDATE
)
SELECT ev.instance_id, ev.event_type, ev.product_id, ev.operation_time, ev.expires_at,
    ev.status,
    (SELECT json_agg(json_build_array(p.id, p.monthly_credits, p.aliases, p.display_name,
                                      p.is_default, p.rollover_max_credits,
                                      p.rollover_expires_after_s)
                     ORDER BY p.monthly_credits, p.id)
     FROM plans p),
    (SELECT json_build_array(usage_on_plan_change, expiry_grace_seconds) FROM policy),
    sub.plan_id, sub.status, sub.expires_at, sub.rev, sub.source_time,
    inst.plan_id, inst.credits_total, inst.credits_used_month, inst.bonus_credits,
    inst.period_start, inst.period_end, inst.applied_rev, inst.version
FROM ev LEFT JOIN sub ON true LEFT JOIN inst ON true
"""

# Everything an apply writes, in one statement; the flags say which parts apply. A created
# instance is inserted with its converged numbers (the reference inserts, then updates).
_WRITE = """
WITH created AS (
    INSERT INTO instances (instance_id, plan_id, credits_total, bonus_credits,
        credits_used_month, period_start, period_end, applied_rev, version, created_at,
        updated_at, last_synced_at)
    SELECT %(iid)s, %(c_plan)s, %(c_total)s, 0, %(c_used)s, %(c_start)s, %(c_end)s,
        %(c_rev)s, %(c_version)s, %(now)s, %(now)s, %(now)s
    WHERE %(create)s
), converged AS (
    UPDATE instances SET
        plan_id = COALESCE(%(plan)s, plan_id),
        credits_total = COALESCE(%(total)s, credits_total),
        credits_used_month = COALESCE(%(used)s, credits_used_month),
        bonus_credits = COALESCE(%(bonus)s, bonus_credits),
        period_start = COALESCE(%(start)s, period_start),
        period_end = COALESCE(%(end)s, period_end),
        applied_rev = COALESCE(%(rev)s, applied_rev),
        version = version + %(bump)s,
        updated_at = CASE WHEN %(bump)s > 0 THEN %(now)s ELSE updated_at END,
        last_synced_at = %(now)s
    WHERE instance_id = %(iid)s AND version = %(version)s AND %(converge)s AND NOT %(create)s
    RETURNING 1
), subscription AS (
    INSERT INTO subscriptions (instance_id, plan_id, status, expires_at, rev, source_time,
        updated_at)
    SELECT %(iid)s, %(s_plan)s, %(s_status)s, %(s_expires)s, %(s_rev)s, %(s_time)s, %(now)s
    WHERE %(subscribe)s
    ON CONFLICT (instance_id) DO UPDATE SET plan_id = EXCLUDED.plan_id,
        status = EXCLUDED.status, expires_at = EXCLUDED.expires_at, rev = EXCLUDED.rev,
        source_time = EXCLUDED.source_time, updated_at = EXCLUDED.updated_at
    WHERE subscriptions.source_time <= EXCLUDED.source_time  -- never backwards
    RETURNING 1
), entries AS (
    INSERT INTO ledger (""" + ", ".join(ledger.COLUMNS) + """)
    SELECT """ + ", ".join({"at": "%(now)s", "actor": "%(actor)s", "correlation_id": "%(id)s"}
                           .get(column, f"e.{column}") for column in ledger.COLUMNS) + """
    FROM ROWS FROM (jsonb_to_recordset(%(ledger)s) AS (""" + ", ".join(
        f"{column} {ledger.TYPES[column]}" for column in ledger.VARYING) + """))
    WITH ORDINALITY AS e(""" + ", ".join(ledger.VARYING) + """, n)
    ORDER BY e.n
    RETURNING id, kind
), app_events AS (
    INSERT INTO outbox (id, instance_id, type, payload, created_at, status, attempts,
        next_attempt_at)
    SELECT x.id, %(iid)s, x.type, jsonb_set(x.payload, '{data,ledgerId}',
                                            COALESCE(to_jsonb(entries.id), 'null'))::json,
        %(now)s, 'pending', 0, %(now)s
    FROM ROWS FROM (jsonb_to_recordset(%(events)s) AS (id text, type text, payload jsonb))
    WITH ORDINALITY AS x(id, type, payload, n)
    LEFT JOIN entries ON entries.kind = x.payload->'data'->>'kind'
    ORDER BY x.n
), granted AS (  -- a rollover at the monthly reset, only when the instance was written
    INSERT INTO grants (""" + ", ".join(grant_rows.COLUMNS) + """)
    SELECT """ + ", ".join(f"g.{column}" for column in grant_rows.COLUMNS) + """
    FROM jsonb_to_recordset(%(grants)s) AS g(""" + ", ".join(
        f"{column} {grant_rows.TYPES[column]}" for column in grant_rows.COLUMNS) + """)
    WHERE EXISTS (SELECT 1 FROM converged)
)
UPDATE webhook_events SET status = %(status)s, attempts = attempts + 1, last_error = NULL,
    next_attempt_at = NULL, applied_at = %(applied_at)s
WHERE id = %(id)s
RETURNING (SELECT count(*) FROM subscription), (SELECT count(*) FROM converged)
"""
_FAILED = """
UPDATE webhook_events SET status = %s, attempts = %s, last_error = %s, next_attempt_at = %s
WHERE id = %s"""

ATTEMPTS = 3  # per call, against connections a database restart left dead in the pool

_catalogs: dict[tuple[Any, ...], plans.Catalog] = {}
Connection = AsyncConnection[TupleRow]


def conninfo(url: str) -> str:
    """libpq connection string for an SQLAlchemy `postgresql+psycopg://` URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pool(url: str, *, size: int) -> Pool:
    """An unopened pool of autocommit connections (`await pool.open()` in the lifespan)."""
    return AsyncConnectionPool(conninfo(url), min_size=min(2, size), max_size=size,
                               kwargs={"autocommit": True}, timeout=2.0, open=False)


async def ingest(
    db: Pool, event: inbox.Incoming, *, now: dt.datetime, pol: policy.Policy | None = None,
    on_stored: Callable[[inbox.Receipt], None] | None = None,
) -> inbox.Receipt:
    """Store, then apply, on one connection: three round trips.

    The store is one autocommit statement, sent alone: pipelined with the apply's `BEGIN`
    it would become part of that transaction and commit only with the apply. `on_stored`
    hears the receipt as soon as it is committed, so a caller can answer before a slow
    apply ends. Returns the receipt with the status after the apply.
    """
    receipt: inbox.Receipt | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with db.connection() as conn:
                if receipt is None:
                    receipt = await _store(conn, event, now)
                    if on_stored is not None:
                        on_stored(receipt)
                if receipt.status != Status.PENDING:
                    return receipt
                return inbox.Receipt(receipt.event_id,
                                     await _process(db, conn, receipt.event_id, now, pol))
        except psycopg.OperationalError:
            # a pooled connection the server dropped (a restart): the store is idempotent
            # and the apply all or nothing, so a fresh connection may try again
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def store(db: Pool, event: inbox.Incoming, now: dt.datetime) -> inbox.Receipt:
    """Commit the event to the inbox (or find its duplicate): one autocommit statement."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with db.connection() as conn:
                return await _store(conn, event, now)
        except psycopg.OperationalError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def process(
    db: Pool, event_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> str:
    """Apply one stored event and converge its instance; returns its status afterwards.

    A failure leaves the event `pending` with a backoff (`failed` after
    `inbox.MAX_ATTEMPTS`), as `inbox.process` does.
    """
    async with db.connection() as conn:
        return await _process(db, conn, event_id, now, pol)


async def _store(conn: Connection, event: inbox.Incoming, now: dt.datetime) -> inbox.Receipt:
    cursor = await conn.execute(_STORE, _store_params(str(uuid.uuid4()), event, now))
    return await _receipt(conn, cursor, event)


def _store_params(event_id: str, event: inbox.Incoming, now: dt.datetime) -> dict[str, Any]:
    return {"id": event_id, "key": inbox.dedupe_key(event), "instance_id": event.instance_id,
            "event_type": event.event_type, "product_id": event.product_id,
            "operation_time": event.operation_time, "expires_at": event.expires_at, "now": now,
            "payload": Json(event.payload), "status": inbox.first_status(event)}


async def _receipt(
    conn: Connection, cursor: psycopg.AsyncCursor[TupleRow], event: inbox.Incoming
) -> inbox.Receipt:
    row = await cursor.fetchone()
    if row is None:  # the duplicate committed after this statement's snapshot
        found = await (await conn.execute(_EXISTING, (inbox.dedupe_key(event),))).fetchone()
        assert found is not None
        return inbox.Receipt(str(found[0]), Status.DUPLICATE)
    return inbox.Receipt(str(row[0]), inbox.first_status(event) if row[1] else Status.DUPLICATE)


async def _process(
    db: Pool, conn: Connection, event_id: str, now: dt.datetime, pol: policy.Policy | None
) -> str:
    """One transaction: `BEGIN`, the lock and the read; the writes; `COMMIT`."""
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            await conn.execute(_LOCK, {"id": event_id})
            read = await conn.execute(_READ, {"id": event_id})
        row = await read.fetchone()
        if row is None:
            raise errors.NotFound(f"no webhook event {event_id}")
        if row[5] not in inbox.APPLICABLE:
            await conn.execute("ROLLBACK")
            return str(row[5])
        made, version = _decide(row, now, pol)
        writes = _writes(event_id, row[0], made, version, now)
        written = await (await conn.execute(_WRITE, writes)).fetchone()
        assert written is not None
        if (made.subscription is not None and not written[0]) or (
                writes["converge"] and not written[1]):
            # the lock makes this impossible; the guards make sure it is never written blind
            raise RuntimeError(f"instance {row[0]} changed while it was locked")
        await conn.execute("COMMIT")
        if made.steps:
            convergence.log_change(policy.Change(row[0], made.steps), dry_run=False)
        return made.status
    except psycopg.OperationalError:
        if conn.broken:
            raise  # the caller may try again on a fresh connection
        return await _failed(db, conn, event_id, now)
    except Exception as exc:
        return await _failed(db, conn, event_id, now, exc)


async def _failed(
    db: Pool, conn: Connection, event_id: str, now: dt.datetime,
    exc: BaseException | None = None,
) -> str:
    if not conn.broken:
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")
    exc = exc or sys.exc_info()[1] or RuntimeError("unknown error")
    return await _record_failure(db, event_id, now, exc)


def _decide(
    row: tuple[Any, ...], now: dt.datetime, pol: policy.Policy | None
) -> tuple[decision.Decision, int | None]:
    """`decision.decide()` on what `_READ` returned; and the instance's version."""
    (instance_id, event_type, product_id, operation_time, expires_at, _status, catalog_rows,
     policy_row, s_plan, s_status, s_expires, s_rev, s_time, *inst) = row
    sub = None if s_plan is None else subscriptions.State(
        s_plan, s_status, _utc_or_none(s_expires), s_rev, _utc(s_time))
    actual = None if inst[0] is None else policy.Numbers(
        inst[0], inst[1], inst[2], inst[3], _utc(inst[4]), _utc(inst[5]), inst[6])
    event = decision.Event(instance_id, event_type, _utc(operation_time), product_id,
                           _utc_or_none(expires_at))
    made = decision.decide(event, sub, actual, _catalog(catalog_rows or []), now,
                           pol if pol is not None else policy.from_row(policy_row))
    return made, inst[7]


def _writes(
    event_id: str, instance_id: str, made: decision.Decision, version: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The parameters of `_WRITE` that carry out `made`."""
    final = made.final
    created, converge = made.created is not None, made.created is None and version is not None
    moved = converge and bool(made.steps)
    new = made.subscription
    rows: list[dict[str, Any]] = []
    if made.created is not None:
        rows.append(ledger.provision_entry(instance_id, made.created, at=now,
                                           actor=enums.Actor.WEBHOOK, correlation_id=event_id))
    made_grants: list[dict[str, Any]] = []  # rollover grants at a monthly reset
    for step in made.steps:
        grant_id = None
        if step.kind == enums.LedgerKind.ROLLOVER:
            made_grants.append(grant_rows.rollover_row(instance_id, step, now))
            grant_id = made_grants[-1]["id"]
        rows.append(ledger.step_entry(instance_id, step, at=now, actor=enums.Actor.WEBHOOK,
                                      correlation_id=event_id, grant_id=grant_id))
    numbers = final if (created or moved) else None
    return {
        "id": event_id, "iid": instance_id, "now": now, "status": made.status,
        "applied_at": now if made.status == Status.APPLIED else None,
        "create": created, "converge": converge, "version": version,
        "bump": 1 if moved else 0,
        "c_version": 1 if made.steps else 0,
        **{f"c_{key}": getattr(numbers, field) if created and numbers else None
           for key, field in _NUMBER_PARAMS},
        **{key: getattr(numbers, field) if moved and numbers else None
           for key, field in _NUMBER_PARAMS},
        "subscribe": new is not None,
        "s_plan": new.plan_id if new else None, "s_status": new.status if new else None,
        "s_expires": new.expires_at if new else None, "s_rev": new.rev if new else None,
        "s_time": new.source_time if new else None,
        "actor": "webhook",
        "ledger": Jsonb([{k: v for k, v in entry.items() if k not in ledger.FIXED}
                         for entry in rows]),
        # the events to the app; `ledgerId` is filled in from the ledger rows' ids
        "events": Jsonb([{"id": e["id"], "type": e["type"], "payload": e["payload"]}
                         for e in outbox.rows(events.step_events(
                             [policy.Change(instance_id, made.steps)] if made.steps else [],
                             {}), now)]),
        "grants": Jsonb([{k: v.isoformat() if isinstance(v, dt.datetime) else v
                          for k, v in row.items()} for row in made_grants]),
    }


# `_WRITE`'s parameter -> policy.Numbers field (with a `c_` prefix for a created instance)
_NUMBER_PARAMS = (("plan", "plan_id"), ("total", "credits_total"), ("used", "credits_used"),
                  ("bonus", "bonus_credits"),
                  ("start", "period_start"), ("end", "period_end"), ("rev", "applied_rev"))


async def _record_failure(db: Pool, event_id: str, now: dt.datetime,
                          exc: BaseException) -> str:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    log.warning("webhook %s failed to apply: %s", event_id, error,
                extra={"event_id": event_id, "error": error})
    try:
        async with db.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "SELECT attempts FROM webhook_events WHERE id = %s FOR UPDATE", (event_id,)
            )).fetchone()
            attempts = (row[0] if row else 0) + 1
            status = Status.FAILED if attempts >= inbox.MAX_ATTEMPTS else Status.PENDING
            retry = None if status == Status.FAILED else now + inbox.backoff(attempts)
            await conn.execute(_FAILED, (status, attempts, error, retry, event_id))
            return status
    except Exception:  # the database is gone: the event is stored, the loop retries it
        log.exception("could not record the failure of webhook %s", event_id)
        return Status.PENDING


def _catalog(rows: Sequence[Sequence[Any]]) -> plans.Catalog:
    """The catalog from its rows; validated once per distinct content."""
    key = tuple((r[0], r[1], tuple(r[2] or ()), r[3], r[4],
                 None if r[5] is None or r[6] is None
                 else plans.Rollover(r[5], dt.timedelta(seconds=r[6]))) for r in rows)
    found = _catalogs.get(key)
    if found is None:
        if not rows:
            raise plans.CatalogError(
                "the plans table is empty: run `creditsync plans apply FILE` or start "
                "`creditsync run`, which seeds the built-in plans")
        found = plans.Catalog(tuple(plans.Plan(*k) for k in key))
        if len(_catalogs) > 64:
            _catalogs.clear()
        _catalogs[key] = found
    return found


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC)


def _utc_or_none(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else moment.astimezone(dt.UTC)
