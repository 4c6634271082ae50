"""The inbox's single-event path on PostgreSQL, for the webhook endpoint: async, few round trips.

Same contract as `inbox.store` and `inbox.process` (the reference, which the retry loop,
replays and SQLite use; a property test checks both give the same results): the event is
committed to the inbox (deduplicated on its business identity) before it is acknowledged,
then applied in a second transaction that updates the subscription and converges the one
instance. The decisions come from the same pure functions (`subscriptions.next_state`,
`policy.desired_plan_id`, `policy.transition`, `convergence.ledger_row`); this module only
reads and writes rows, on psycopg's async pool with pipelined statements, so the webhook
answers without a thread hop or statement building per request.

Row locks replace the version guard: the event, subscription and instance rows are locked
`FOR UPDATE` before anything is decided, as `usage.consume` locks the instance.
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

from creditsync import convergence, inbox, instances, plans, policy, subscriptions

log = logging.getLogger("creditsync.inbox")

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_STORE = """
WITH new AS (
    INSERT INTO webhook_events (id, dedupe_key, instance_id, event_type, product_id,
        operation_time, received_at, payload, status, attempts, next_attempt_at)
    VALUES (%(id)s, %(key)s, %(instance_id)s, %(event_type)s, %(product_id)s,
        %(operation_time)s, %(now)s, %(payload)s, %(status)s, 0, %(now)s)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id
)
SELECT id, true FROM new
UNION ALL
SELECT id, false FROM webhook_events WHERE dedupe_key = %(key)s
LIMIT 1
"""
_EXISTING = "SELECT id FROM webhook_events WHERE dedupe_key = %s"

# Everything an apply decides from, in one statement: the event, its subscription and
# instance (all three locked), and the catalog.
_READ = """
WITH ev AS (
    SELECT instance_id, event_type, product_id, operation_time, payload, status
    FROM webhook_events WHERE id = %(id)s FOR UPDATE
), sub AS (
    SELECT plan_id, status, expires_at, rev, source_time FROM subscriptions
    WHERE instance_id = (SELECT instance_id FROM ev) FOR UPDATE
), inst AS (
    SELECT plan_id, credits_total, credits_used_month, bonus_credits, period_start,
        period_end, applied_rev FROM instances
    WHERE instance_id = (SELECT instance_id FROM ev) FOR UPDATE
)
SELECT ev.instance_id, ev.event_type, ev.product_id, ev.operation_time, ev.payload, ev.status,
    (SELECT json_agg(json_build_array(p.id, p.monthly_credits, p.aliases, p.display_name,
                                      p.is_default) ORDER BY p.monthly_credits, p.id)
     FROM plans p),
    sub.plan_id, sub.status, sub.expires_at, sub.rev, sub.source_time,
    inst.plan_id, inst.credits_total, inst.credits_used_month, inst.bonus_credits,
    inst.period_start, inst.period_end, inst.applied_rev
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
        period_start = COALESCE(%(start)s, period_start),
        period_end = COALESCE(%(end)s, period_end),
        applied_rev = COALESCE(%(rev)s, applied_rev),
        version = version + %(bump)s,
        updated_at = CASE WHEN %(bump)s > 0 THEN %(now)s ELSE updated_at END,
        last_synced_at = %(now)s
    WHERE instance_id = %(iid)s AND %(converge)s AND NOT %(create)s
), subscription AS (
    INSERT INTO subscriptions (instance_id, plan_id, status, expires_at, rev, source_time,
        updated_at)
    SELECT %(iid)s, %(s_plan)s, %(s_status)s, %(s_expires)s, %(s_rev)s, %(s_time)s, %(now)s
    WHERE %(subscribe)s
    ON CONFLICT (instance_id) DO UPDATE SET plan_id = EXCLUDED.plan_id,
        status = EXCLUDED.status, expires_at = EXCLUDED.expires_at, rev = EXCLUDED.rev,
        source_time = EXCLUDED.source_time, updated_at = EXCLUDED.updated_at
), entries AS (
    INSERT INTO ledger (instance_id, at, kind, actor, correlation_id, plan_before, plan_after,
        credits_total_before, credits_total_after, credits_used_before, credits_used_after,
        bonus_before, bonus_after, reason)
    SELECT %(iid)s, %(now)s, e.kind, e.actor, %(id)s, e.plan_before, e.plan_after,
        e.credits_total_before, e.credits_total_after, e.credits_used_before,
        e.credits_used_after, e.bonus_before, e.bonus_after, e.reason
    FROM ROWS FROM (jsonb_to_recordset(%(ledger)s) AS (
        kind text, actor text, plan_before text, plan_after text,
        credits_total_before bigint, credits_total_after bigint, credits_used_before bigint,
        credits_used_after bigint, bonus_before bigint, bonus_after bigint, reason text))
    WITH ORDINALITY AS e(kind, actor, plan_before, plan_after, credits_total_before,
        credits_total_after, credits_used_before, credits_used_after, bonus_before,
        bonus_after, reason, n)
    ORDER BY e.n
)
UPDATE webhook_events SET status = %(status)s, attempts = attempts + 1, last_error = NULL,
    next_attempt_at = NULL, applied_at = %(applied_at)s
WHERE id = %(id)s
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
    db: Pool, event: inbox.Incoming, *, now: dt.datetime, pol: policy.Policy,
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
                if receipt.status != "pending":
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


async def process(db: Pool, event_id: str, *, now: dt.datetime, pol: policy.Policy) -> str:
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
            "operation_time": event.operation_time, "now": now,
            "payload": Json(event.payload), "status": _first_status(event)}


def _first_status(event: inbox.Incoming) -> str:
    return "pending" if event.event_type in subscriptions.EVENT_TYPES else "ignored"


async def _receipt(
    conn: Connection, cursor: psycopg.AsyncCursor[TupleRow], event: inbox.Incoming
) -> inbox.Receipt:
    row = await cursor.fetchone()
    if row is None:  # the duplicate committed after this statement's snapshot
        found = await (await conn.execute(_EXISTING, (inbox.dedupe_key(event),))).fetchone()
        assert found is not None
        return inbox.Receipt(str(found[0]), "duplicate")
    return inbox.Receipt(str(row[0]), _first_status(event) if row[1] else "duplicate")


async def _process(
    db: Pool, conn: Connection, event_id: str, now: dt.datetime, pol: policy.Policy
) -> str:
    """One transaction, two round trips: `BEGIN` and the locking read; writes and `COMMIT`."""
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            read = await conn.execute(_READ, {"id": event_id})
        row = await read.fetchone()
        if row is None:
            raise LookupError(f"no webhook event {event_id}")
        if row[5] not in ("pending", "quarantined"):
            await conn.execute("ROLLBACK")
            return str(row[5])
        status, writes = _decide(event_id, row, now, pol)
        async with conn.pipeline():
            await conn.execute(_WRITE, writes)
            await conn.execute("COMMIT")
        return status
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
    event_id: str, row: tuple[Any, ...], now: dt.datetime, pol: policy.Policy
) -> tuple[str, dict[str, Any]]:
    """What `inbox._apply` decides, with the same functions: the status, and the writes."""
    (instance_id, event_type, product_id, operation_time, payload, _status, catalog_rows,
     s_plan, s_status, s_expires, s_rev, s_time, *inst) = row
    cat = _catalog(catalog_rows or [])
    writes: dict[str, Any] = {
        "id": event_id, "iid": instance_id, "now": now, "create": False, "converge": False,
        "subscribe": False, "ledger": Jsonb([]), "applied_at": None, "bump": 0,
        **dict.fromkeys(("c_plan", "c_total", "c_used", "c_start", "c_end", "c_rev",
                         "c_version", "plan", "total", "used", "start", "end", "rev",
                         "s_plan", "s_status", "s_expires", "s_rev", "s_time"))}

    entries: list[dict[str, Any]] = []

    def done(status: str) -> tuple[str, dict[str, Any]]:
        writes["status"] = status
        writes["applied_at"] = now if status == "applied" else None
        writes["ledger"] = Jsonb([{k: v for k, v in e.items()
                                   if k not in ("instance_id", "at", "correlation_id")}
                                  for e in entries])
        return status, writes

    if event_type not in subscriptions.EVENT_TYPES:
        return done("ignored")
    plan_id: str | None = None
    if event_type in subscriptions.PLAN_EVENTS:
        plan = cat.resolve(product_id or "")
        if plan is None:
            return done("quarantined")
        plan_id = plan.id
    current = None if s_plan is None else subscriptions.State(
        s_plan, s_status, _utc_or_none(s_expires), s_rev, _utc(s_time))
    actual = None if inst[0] is None else policy.Numbers(
        inst[0], inst[1], inst[2], inst[3], _utc(inst[4]), _utc(inst[5]), inst[6])
    if event_type in subscriptions.PROVISIONING and actual is None:
        values, entry = instances.new_instance(instance_id, cat.default, now, "webhook",
                                               event_id)
        actual = policy.Numbers(values["plan_id"], values["credits_total"],
                                values["credits_used_month"], values["bonus_credits"],
                                values["period_start"], values["period_end"],
                                values["applied_rev"])
        writes.update(create=True, c_version=0)
        _created(writes, actual)
        entries.append(entry)
    expires = (payload or {}).get("expiresOn")
    event = subscriptions.BillingEvent(
        instance_id, event_type, _utc(operation_time), plan_id,
        dt.datetime.fromisoformat(expires) if isinstance(expires, str) and expires else None)
    if current is not None and event.operation_time < current.source_time:
        return done("stale")
    new = subscriptions.next_state(current, event, cat.default.id)
    if new is not None:
        writes.update(subscribe=True, s_plan=new.plan_id, s_status=new.status,
                      s_expires=new.expires_at, s_rev=new.rev, s_time=new.source_time)
        current = new
    if actual is not None:
        steps = _steps(actual, current, cat, now, pol)
        if steps:
            final = steps[-1].after
            if writes["create"]:
                writes["c_version"] = 1
                _created(writes, final)
            else:
                writes.update(plan=final.plan_id, total=final.credits_total,
                              used=final.credits_used, start=final.period_start,
                              end=final.period_end, rev=final.applied_rev, bump=1)
            entries += [convergence.ledger_row(instance_id, step, now, "webhook", event_id)
                        for step in steps]
            _log(instance_id, actual, final, steps)
        writes["converge"] = not writes["create"]
    return done("applied")


def _created(writes: dict[str, Any], numbers: policy.Numbers) -> None:
    writes.update(c_plan=numbers.plan_id, c_total=numbers.credits_total,
                  c_used=numbers.credits_used, c_start=numbers.period_start,
                  c_end=numbers.period_end, c_rev=numbers.applied_rev)


def _steps(
    actual: policy.Numbers, sub: subscriptions.State | None, cat: plans.Catalog,
    now: dt.datetime, pol: policy.Policy,
) -> list[policy.Step]:
    """`convergence.converge_in`'s decision for one instance: desired state, then steps."""
    desired_plan, expired = policy.desired_plan_id(
        sub.status if sub else None, sub.plan_id if sub else None,
        sub.expires_at if sub else None, cat.default.id, now, pol.expiry_grace_period)
    known = cat.get(desired_plan)
    desired = policy.Desired(desired_plan, known.monthly_credits if known else None,
                             sub.rev if sub else 0, sub.source_time if sub else None, expired)
    return policy.transition(actual, desired, now, pol)


def _log(instance_id: str, before: policy.Numbers, after: policy.Numbers,
         steps: Sequence[policy.Step]) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    kinds = ",".join(step.kind for step in steps)
    log.info("instance %s: %d → %d credits (plan %s, %s)", instance_id, before.credits_total,
             after.credits_total, after.plan_id, kinds,
             extra={"instance_id": instance_id, "kind": kinds,
                    "credits_before": before.credits_total,
                    "credits_after": after.credits_total, "plan": after.plan_id})


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
            status = "failed" if attempts >= inbox.MAX_ATTEMPTS else "pending"
            retry = None if status == "failed" else now + inbox.backoff(attempts)
            await conn.execute(_FAILED, (status, attempts, error, retry, event_id))
            return status
    except Exception:  # the database is gone: the event is stored, the loop retries it
        log.exception("could not record the failure of webhook %s", event_id)
        return "pending"


def _catalog(rows: Sequence[Sequence[Any]]) -> plans.Catalog:
    """The catalog from its rows; validated once per distinct content."""
    key = tuple((r[0], r[1], tuple(r[2] or ()), r[3], r[4]) for r in rows)
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
