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

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Json
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
_LOCK_EVENT = """
SELECT instance_id, event_type, product_id, operation_time, payload, status
FROM webhook_events WHERE id = %s FOR UPDATE"""
_PLANS = """
SELECT id, monthly_credits, aliases, display_name, is_default FROM plans
ORDER BY monthly_credits, id"""
_LOCK_SUBSCRIPTION = """
SELECT plan_id, status, expires_at, rev, source_time FROM subscriptions
WHERE instance_id = %s FOR UPDATE"""
_LOCK_INSTANCE = """
SELECT plan_id, credits_total, credits_used_month, bonus_credits, period_start, period_end,
    applied_rev FROM instances WHERE instance_id = %s FOR UPDATE"""
_INSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (instance_id, plan_id, status, expires_at, rev, source_time,
    updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"""
_UPDATE_SUBSCRIPTION = """
UPDATE subscriptions SET plan_id = %s, status = %s, expires_at = %s, rev = %s,
    source_time = %s, updated_at = %s WHERE instance_id = %s"""
_INSERT_INSTANCE = """
INSERT INTO instances (instance_id, plan_id, credits_total, bonus_credits, credits_used_month,
    period_start, period_end, applied_rev, version, created_at, updated_at, last_synced_at)
VALUES (%(instance_id)s, %(plan_id)s, %(credits_total)s, %(bonus_credits)s,
    %(credits_used_month)s, %(period_start)s, %(period_end)s, %(applied_rev)s, %(version)s,
    %(created_at)s, %(updated_at)s, %(last_synced_at)s)"""
_UPDATE_INSTANCE = """
UPDATE instances SET plan_id = %s, credits_total = %s, credits_used_month = %s,
    period_start = %s, period_end = %s, applied_rev = %s, version = version + 1,
    updated_at = %s, last_synced_at = %s WHERE instance_id = %s"""
_TOUCH_INSTANCE = "UPDATE instances SET last_synced_at = %s WHERE instance_id = %s"
_LEDGER = """
INSERT INTO ledger (instance_id, at, kind, actor, correlation_id, plan_before, plan_after,
    credits_total_before, credits_total_after, credits_used_before, credits_used_after,
    bonus_before, bonus_after, reason)
VALUES (%(instance_id)s, %(at)s, %(kind)s, %(actor)s, %(correlation_id)s, %(plan_before)s,
    %(plan_after)s, %(credits_total_before)s, %(credits_total_after)s,
    %(credits_used_before)s, %(credits_used_after)s, %(bonus_before)s, %(bonus_after)s,
    %(reason)s)"""
_DONE = """
UPDATE webhook_events SET status = %s, attempts = attempts + 1, last_error = NULL,
    next_attempt_at = NULL, applied_at = %s WHERE id = %s"""
_FAILED = """
UPDATE webhook_events SET status = %s, attempts = %s, last_error = %s, next_attempt_at = %s
WHERE id = %s"""

ATTEMPTS = 3  # per call, against connections a database restart left dead in the pool

_catalogs: dict[tuple[Any, ...], plans.Catalog] = {}


def conninfo(url: str) -> str:
    """libpq connection string for an SQLAlchemy `postgresql+psycopg://` URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pool(url: str, *, size: int) -> Pool:
    """An unopened pool of autocommit connections (`await pool.open()` in the lifespan)."""
    return AsyncConnectionPool(conninfo(url), min_size=min(2, size), max_size=size,
                               kwargs={"autocommit": True}, timeout=2.0, open=False)


async def store(db: Pool, event: inbox.Incoming, now: dt.datetime) -> inbox.Receipt:
    """Commit the event to the inbox (or find its duplicate): one autocommit statement."""
    status = "pending" if event.event_type in subscriptions.EVENT_TYPES else "ignored"
    key = inbox.dedupe_key(event)
    params = {"id": str(uuid.uuid4()), "key": key, "instance_id": event.instance_id,
              "event_type": event.event_type, "product_id": event.product_id,
              "operation_time": event.operation_time, "now": now,
              "payload": Json(event.payload), "status": status}
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with db.connection() as conn:
                row = await (await conn.execute(_STORE, params)).fetchone()
                if row is None:  # the duplicate committed after this statement's snapshot
                    found = await (await conn.execute(_EXISTING, (key,))).fetchone()
                    row = (found[0] if found else None, False)
            break
        except psycopg.OperationalError:
            # a pooled connection the server dropped (a restart): try a fresh one; the
            # insert is idempotent, so a retry never stores twice
            if attempt == ATTEMPTS:
                raise
    event_id, inserted = str(row[0]), bool(row[1])
    return inbox.Receipt(event_id, status if inserted else "duplicate")


async def process(
    db: Pool, event_id: str, *, now: dt.datetime, pol: policy.Policy
) -> str:
    """Apply one stored event and converge its instance; returns its status afterwards.

    A failure leaves the event `pending` with a backoff (`failed` after
    `inbox.MAX_ATTEMPTS`), as `inbox.process` does.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with db.connection() as conn, conn.transaction():
                return await _apply(conn, event_id, now, pol)
        except psycopg.OperationalError as exc:  # all or nothing: safe to try again
            if attempt == ATTEMPTS:
                return await _record_failure(db, event_id, now, exc)
        except Exception as exc:
            return await _record_failure(db, event_id, now, exc)
    raise AssertionError("unreachable")


async def _apply(
    conn: AsyncConnection[TupleRow], event_id: str, now: dt.datetime, pol: policy.Policy
) -> str:
    async with conn.pipeline():
        event_cur = await conn.execute(_LOCK_EVENT, (event_id,))
        plans_cur = await conn.execute(_PLANS)
    row = await event_cur.fetchone()
    if row is None:
        raise LookupError(f"no webhook event {event_id}")
    instance_id, event_type, product_id, operation_time, payload, status = row
    if status not in ("pending", "quarantined"):
        return str(status)
    cat = _catalog(await plans_cur.fetchall())
    outcome = await _decide(conn, event_id, instance_id, event_type, product_id,
                            _utc(operation_time), payload or {}, cat, now, pol)
    await conn.execute(_DONE, (outcome, now if outcome == "applied" else None, event_id))
    return outcome


async def _decide(
    conn: AsyncConnection[TupleRow], event_id: str, instance_id: str, event_type: str,
    product_id: str | None, operation_time: dt.datetime, payload: dict[str, Any],
    cat: plans.Catalog, now: dt.datetime, pol: policy.Policy,
) -> str:
    """What `inbox._apply` decides, with the same functions; writes through `conn`."""
    if event_type not in subscriptions.EVENT_TYPES:
        return "ignored"
    plan_id: str | None = None
    if event_type in subscriptions.PLAN_EVENTS:
        plan = cat.resolve(product_id or "")
        if plan is None:
            return "quarantined"
        plan_id = plan.id
    async with conn.pipeline():
        sub_cur = await conn.execute(_LOCK_SUBSCRIPTION, (instance_id,))
        inst_cur = await conn.execute(_LOCK_INSTANCE, (instance_id,))
    sub_row = await sub_cur.fetchone()
    inst_row = await inst_cur.fetchone()
    current = None if sub_row is None else subscriptions.State(
        sub_row[0], sub_row[1], _utc_or_none(sub_row[2]), sub_row[3], _utc(sub_row[4]))
    actual = None if inst_row is None else policy.Numbers(
        inst_row[0], inst_row[1], inst_row[2], inst_row[3], _utc(inst_row[4]),
        _utc(inst_row[5]), inst_row[6])

    async with conn.pipeline():
        if event_type == subscriptions.INSTALLED and actual is None:
            actual = await _create_instance(conn, instance_id, cat, now, event_id)
        expires = payload.get("expiresOn")
        event = subscriptions.BillingEvent(
            instance_id, event_type, operation_time, plan_id,
            dt.datetime.fromisoformat(expires) if isinstance(expires, str) and expires else None)
        if current is not None and operation_time < current.source_time:
            return "stale"
        new = subscriptions.next_state(current, event, cat.default.id)
        if new is not None:
            await _write_subscription(conn, instance_id, current is None, new, now)
            current = new
        if actual is not None:
            await _converge(conn, instance_id, actual, current, cat, now, pol, event_id)
    return "applied"


async def _create_instance(
    conn: AsyncConnection[TupleRow], instance_id: str, cat: plans.Catalog, now: dt.datetime,
    event_id: str,
) -> policy.Numbers:
    row, entry = instances.new_instance(instance_id, cat.default, now, "webhook", event_id)
    await conn.execute(_INSERT_INSTANCE, row)
    await conn.execute(_LEDGER, entry)
    return policy.Numbers(row["plan_id"], row["credits_total"], row["credits_used_month"],
                          row["bonus_credits"], row["period_start"], row["period_end"],
                          row["applied_rev"])


async def _write_subscription(
    conn: AsyncConnection[TupleRow], instance_id: str, insert: bool,
    new: subscriptions.State, now: dt.datetime,
) -> None:
    if insert:
        await conn.execute(_INSERT_SUBSCRIPTION, (
            instance_id, new.plan_id, new.status, new.expires_at, new.rev, new.source_time,
            now))
    else:
        await conn.execute(_UPDATE_SUBSCRIPTION, (
            new.plan_id, new.status, new.expires_at, new.rev, new.source_time, now,
            instance_id))


async def _converge(
    conn: AsyncConnection[TupleRow], instance_id: str, actual: policy.Numbers,
    sub: subscriptions.State | None, cat: plans.Catalog, now: dt.datetime,
    pol: policy.Policy, event_id: str,
) -> None:
    """`convergence.converge_in` for one locked instance: desired state, steps, ledger."""
    desired_plan, expired = policy.desired_plan_id(
        sub.status if sub else None, sub.plan_id if sub else None,
        sub.expires_at if sub else None, cat.default.id, now, pol.expiry_grace_period)
    known = cat.get(desired_plan)
    desired = policy.Desired(desired_plan, known.monthly_credits if known else None,
                             sub.rev if sub else 0, sub.source_time if sub else None, expired)
    steps = policy.transition(actual, desired, now, pol)
    if not steps:
        await conn.execute(_TOUCH_INSTANCE, (now, instance_id))
        return
    after = steps[-1].after
    await conn.execute(_UPDATE_INSTANCE, (
        after.plan_id, after.credits_total, after.credits_used, after.period_start,
        after.period_end, after.applied_rev, now, now, instance_id))
    for step in steps:
        await conn.execute(_LEDGER, convergence.ledger_row(instance_id, step, now, "webhook",
                                                           event_id))
    log.info("instance %s: %d → %d credits (plan %s, %s)", instance_id,
             actual.credits_total, after.credits_total, after.plan_id,
             ",".join(step.kind for step in steps),
             extra={"instance_id": instance_id, "kind": ",".join(s.kind for s in steps),
                    "credits_before": actual.credits_total,
                    "credits_after": after.credits_total, "plan": after.plan_id})


async def _record_failure(db: Pool, event_id: str, now: dt.datetime, exc: Exception) -> str:
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


def _catalog(rows: Sequence[tuple[Any, ...]]) -> plans.Catalog:
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
