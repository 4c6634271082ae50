"""The outbox: events to the app, written in the transaction of the change that causes them,
and the loop that delivers them (Standard Webhooks, signed by `delivery.Client`).

`emit()` / `emit_many()` insert rows inside the caller's transaction, so a change that rolls
back sends nothing and nothing committed is lost. Every event is written whether or not a
URL is configured; only a process with `CREDITSYNC_APP_WEBHOOK_URL` delivers them, so a
CLI run or a replica without the URL never drops one.

`deliver_due()` runs under the delivery lock (one deliverer among all runners) and sends,
for each instance, its oldest pending event only: a failing instance's later events wait
behind it, other instances go on (in parallel, up to the client's concurrency). A failure
is retried with exponential backoff; after `MAX_ATTEMPTS` the event is `dead` and the next
one of its instance goes. The `webhook-id` (the row's `id`) stays the same on every retry
and replay, so an app that deduplicates on it acts once. A crash between the app's 2xx and
the row's update sends the event again: delivery is at least once.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import enums, errors, locks
from creditsync.storage import database, models

log = logging.getLogger("creditsync.outbox")

_o = models.OUTBOX
Status = enums.DeliveryStatus

MAX_ATTEMPTS = 30  # about 20 hours of retries with `backoff` (the app may be down a while)
ROUND_SIZE = 100  # instances' head events sent per round
MAX_ROUNDS = 50  # rounds per `deliver_due` call, so a runner's other steps are not held up
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


class Sender(Protocol):
    """What delivers one event (`delivery.Client`); raises `DeliveryFailed` when it failed."""

    concurrency: int

    def send(self, webhook_id: str, body: str) -> None: ...


class DeliveryFailed(Exception):
    """The app did not take the event (an HTTP status, a timeout, a refused connection)."""


@dataclass(frozen=True)
class Event:
    """One event to write: its type and its `data` (`instanceId` is added)."""

    instance_id: str
    type: enums.AppEvent
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Delivery:
    """An outbox row as the admin API shows it."""

    id: str
    seq: int
    instance_id: str
    type: str
    payload: dict[str, Any]
    created_at: dt.datetime
    status: str
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    delivered_at: dt.datetime | None


def new_ids(count: int) -> list[str]:
    """`msg_` and a ULID: 26 characters of Crockford base32, 10 for the clock's
    milliseconds (48 bits), then 16 for 80 random bits, so ids sort by the time they were
    made. One read of the system's randomness and one encoding for the whole batch."""
    clock_ms = int(time.time() * 1000)
    stamp = "".join(_CROCKFORD[(clock_ms >> (5 * k)) & 31] for k in range(9, -1, -1))
    noise = base64.b32encode(os.urandom(10 * count)).decode().translate(_TO_CROCKFORD)
    return [f"msg_{stamp}{noise[16 * n:16 * n + 16]}" for n in range(count)]


@functools.lru_cache(maxsize=4096)  # a batch's periods share a few boundaries
def timestamp(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as payloads carry it."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def payload(event: Event, now: dt.datetime) -> dict[str, Any]:
    """The Standard Webhooks body: `{"type", "timestamp", "data": {"instanceId", ...}}`."""
    return {"type": str(event.type), "timestamp": timestamp(now),
            "data": {"instanceId": event.instance_id, **event.data}}


def rows(events: Sequence[Event], now: dt.datetime) -> list[dict[str, Any]]:
    return [{"id": webhook_id, "instance_id": e.instance_id, "type": str(e.type),
             "payload": payload(e, now), "created_at": now, "status": Status.PENDING,
             "attempts": 0, "next_attempt_at": now}
            for webhook_id, e in zip(new_ids(len(events)), events, strict=True)]


def emit(conn: Connection, instance_id: str, type: enums.AppEvent, data: Mapping[str, Any], *,
         now: dt.datetime) -> str:
    """Write one event inside the caller's transaction; its `webhook-id`."""
    return emit_many(conn, [Event(instance_id, type, data)], now=now)[0]


_COLUMNS = ("id", "instance_id", "type", "payload", "created_at", "status", "attempts",
            "next_attempt_at")
_SQLITE_INSERT = (f"INSERT INTO outbox ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in _COLUMNS)})")


def emit_many(conn: Connection, events: Sequence[Event], *, now: dt.datetime) -> list[str]:
    """Write a batch's events inside the caller's transaction: straight to the driver (a
    monthly reset writes one per instance), `executemany` on SQLite, `COPY` on PostgreSQL.
    Their `webhook-id`s, in order."""
    if not events:
        return []
    raw = conn.connection.driver_connection
    assert raw is not None
    stamp: object = models.sqlite_time(now) if database.is_sqlite(conn) else now
    pending = str(Status.PENDING)
    values = [(webhook_id, e.instance_id, str(e.type), body(payload(e, now)), stamp, pending,
               0, stamp) for webhook_id, e in zip(new_ids(len(events)), events, strict=True)]
    if database.is_sqlite(conn):
        raw.executemany(_SQLITE_INSERT, values)
    else:
        with raw.cursor() as cur, \
                cur.copy(f"COPY outbox ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)
    return [str(row[0]) for row in values]


def backoff(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s, ... capped at one hour, after the `attempts`-th failure."""
    return dt.timedelta(seconds=min(5 * 2 ** max(attempts - 1, 0), 3600))


def due_heads(conn: Connection, now: dt.datetime, limit: int) -> list[sa.Row[Any]]:
    """Each instance's oldest pending event, when its backoff has passed."""
    older = _o.alias("older")
    blocked = sa.exists().where(older.c.instance_id == _o.c.instance_id,
                                older.c.status == Status.PENDING, older.c.seq < _o.c.seq)
    return list(conn.execute(
        sa.select(_o.c.seq, _o.c.id, _o.c.instance_id, _o.c.payload, _o.c.attempts)
        .where(_o.c.status == Status.PENDING, _o.c.next_attempt_at <= now, ~blocked)
        .order_by(_o.c.next_attempt_at, _o.c.seq).limit(limit)))


_JSON = msgspec.json.Encoder()  # compact, UTF-8 unescaped, keys in order; ~10x `json`


def body(event_payload: Mapping[str, Any]) -> str:
    """The bytes that are signed and sent: compact JSON (what `json.dumps` with
    `separators=(",", ":"), ensure_ascii=False` writes)."""
    return _JSON.encode(event_payload).decode()


def _attempt(client: Sender, row: sa.Row[Any]) -> str | None:
    """Send one event; the error, or None when the app took it."""
    try:
        client.send(row.id, body(row.payload))
    except DeliveryFailed as exc:
        return str(exc)[:2000] or "delivery failed"
    except Exception as exc:  # a bug or an unexpected client error: retried like a failure
        log.exception("delivering %s failed", row.id)
        return f"{type(exc).__name__}: {exc}"[:2000]
    return None


def deliver_due(
    engine: Engine, client: Sender, now: dt.datetime | None = None, *,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, int] | None:
    """Deliver what is due; outcomes (`delivered`, `retry`, `dead`) by count, or None when
    another runner holds the delivery lock.

    Rounds repeat while events are due (an instance's next event is due as soon as the one
    before it is delivered), up to `max_rounds`. `now` None: the clock, read each round.
    """
    outcomes = {"delivered": 0, "retry": 0, "dead": 0}
    with locks.delivery_lock(engine) as held:
        if not held:
            return None
        workers = max(1, client.concurrency)
        with concurrent.futures.ThreadPoolExecutor(workers, "creditsync-deliver") as pool:
            for _ in range(max_rounds):
                moment = now if now is not None else dt.datetime.now(dt.UTC)
                with database.read(engine) as conn:
                    heads = due_heads(conn, moment, ROUND_SIZE)
                if not heads:
                    break
                results = list(pool.map(lambda row: _attempt(client, row), heads))
                with database.write(engine) as conn:
                    for row, error in zip(heads, results, strict=True):
                        outcome = _record(conn, row, error, moment)
                        outcomes[outcome] += 1
    if any(outcomes.values()):
        log.info("delivered events to the app: %s", outcomes, extra={"outcomes": outcomes})
    return outcomes


def _record(conn: Connection, row: sa.Row[Any], error: str | None, now: dt.datetime) -> str:
    attempts = row.attempts + 1
    if error is None:
        conn.execute(_o.update().where(_o.c.seq == row.seq).values(
            status=Status.DELIVERED, attempts=attempts, delivered_at=now, next_attempt_at=None,
            last_error=None))
        return "delivered"
    dead = attempts >= MAX_ATTEMPTS
    conn.execute(_o.update().where(_o.c.seq == row.seq).values(
        status=Status.DEAD if dead else Status.PENDING, attempts=attempts, last_error=error,
        next_attempt_at=None if dead else now + backoff(attempts)))
    log.warning("event %s to the app failed (attempt %d%s): %s", row.id, attempts,
                ", giving up" if dead else "", error,
                extra={"webhook_id": row.id, "instance_id": row.instance_id, "error": error})
    return "dead" if dead else "retry"


def replay(engine: Engine, webhook_id: str, *, now: dt.datetime) -> Delivery:
    """Send a dead (or delivered) event again, with the same `webhook-id`, next in its
    instance's line (admin action); 409 for one still pending."""
    with database.write(engine) as conn:
        row = conn.execute(sa.select(_o.c.status).where(_o.c.id == webhook_id)).first()
        if row is None:
            raise errors.NotFound(f"no delivery {webhook_id}: list them with GET "
                                  "/api/admin/deliveries", code="delivery_not_found")
        if row.status == Status.PENDING:
            raise errors.Conflict(f"delivery {webhook_id} is pending: the loop sends it",
                                  code="delivery_pending")
        conn.execute(_o.update().where(_o.c.id == webhook_id).values(
            status=Status.PENDING, attempts=0, next_attempt_at=now, last_error=None,
            delivered_at=None))
        return _one(conn, webhook_id)


def _one(conn: Connection, webhook_id: str) -> Delivery:
    row = conn.execute(sa.select(_o).where(_o.c.id == webhook_id)).one()
    return Delivery(**row._mapping)


@dataclass(frozen=True)
class Page:
    items: list[Delivery]
    next_before: int | None  # the `seq` to pass as `before` for the next page


def list_deliveries(
    engine: Engine, *, status: str | None = None, instance_id: str | None = None,
    limit: int = 50, before: int | None = None,
) -> Page:
    """Newest first; page with `before` (the `nextBefore` of the previous page)."""
    query = sa.select(_o)
    if status is not None:
        query = query.where(_o.c.status == status)
    if instance_id is not None:
        query = query.where(_o.c.instance_id == instance_id)
    if before is not None:
        query = query.where(_o.c.seq < before)
    with database.read(engine) as conn:
        found = [Delivery(**row._mapping)
                 for row in conn.execute(query.order_by(_o.c.seq.desc()).limit(limit + 1))]
    more = len(found) > limit
    return Page(found[:limit], found[limit - 1].seq if more else None)


def counts(engine: Engine) -> dict[str, int]:
    """Events by status (`pending` is the backlog)."""
    with database.read(engine) as conn:
        found = {str(s): int(n) for s, n in conn.execute(
            sa.select(_o.c.status, sa.func.count()).group_by(_o.c.status))}
    return {str(s): found.get(str(s), 0) for s in Status}


def oldest_pending_age(engine: Engine, now: dt.datetime) -> float | None:
    """Seconds since the oldest pending event was written (None: nothing pending)."""
    with database.read(engine) as conn:
        oldest = conn.execute(sa.select(sa.func.min(_o.c.created_at))
                              .where(_o.c.status == Status.PENDING)).scalar()
    if oldest is None:
        return None
    if isinstance(oldest, str):  # SQLite's aggregate bypasses the column type
        oldest = dt.datetime.fromisoformat(oldest).replace(tzinfo=dt.UTC)
    return max((now - oldest).total_seconds(), 0.0)

