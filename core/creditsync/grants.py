"""Grants: credits beside the plan, with a priority and an optional expiry.

Spending order (`ORDER`): plan credits first (they reset monthly; `usage` decides that
split), then live grants by `priority` (lower first), then soonest `expires_at` (none last),
then oldest. `instances.bonus_credits` is the sum of `remaining` over an instance's live
grants; every function here changes both, with a ledger row, in one transaction and under
the instance's lock (`database.lock_instance`), and bumps the instance's `version` so that
convergence's version-guarded writes never overwrite them.

The functions taking a `conn` expect the caller to hold the instance's lock inside its write
transaction (`consume`, `adjust_bonus`, the routes' wrappers below); the ones taking an
`engine` open that transaction themselves. `expire_due()` is the loop's: it finds due grants
through the partial index on live grants' `expires_at` and returns what expired — the place
where a `grant.expired` event is written (in the same transaction) once the outbox exists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import enums, errors, events, instances, ledger, outbox, policy
from creditsync.storage import database, grant_rows, models

_g = models.GRANTS
_i = models.INSTANCES
_ledger = models.LEDGER
_draws = models.LEDGER_GRANT_DRAWS

Status = enums.GrantStatus
Source = enums.GrantSource

DEFAULT_PRIORITY = grant_rows.DEFAULT_PRIORITY
new_id = grant_rows.new_id
rollover_key = grant_rows.rollover_key
MAX_AMOUNT = 10**12  # per grant: keeps every sum far inside a 64-bit integer
MAX_REASON = 500
MAX_KEY = 200
LIST_ENDED = 100  # ended grants a listing shows, newest first
EXPIRE_BATCH = 500  # instances one `expire_due` pass handles per query

# the spending order of an instance's live grants (ids break ties between equal grants)
ORDER = (_g.c.priority, _g.c.expires_at.is_(None), _g.c.expires_at, _g.c.created_at, _g.c.id)
# the partial index `ix_grants_live_expires_at`'s predicate, written out so the planner
# matches it (a bound parameter for the status would not)
_LIVE_WITH_EXPIRY = sa.text("grants.status = 'live' AND grants.expires_at IS NOT NULL")


@dataclass(frozen=True)
class Grant:
    """One grant as stored; `remaining` is 0 once it ended (spent, expired or voided)."""

    id: str
    instance_id: str
    amount: int
    remaining: int
    priority: int
    expires_at: dt.datetime | None
    reason: str
    source: str
    idempotency_key: str | None
    status: str
    created_at: dt.datetime
    ended_at: dt.datetime | None


@dataclass(frozen=True)
class Made:
    """A `create`: the grant, and whether its idempotency key had made it before."""

    grant: Grant
    replayed: bool = False
    ledger_id: int | None = None  # None when replayed


@dataclass(frozen=True)
class Draw:
    """What one spend took from one grant."""

    grant_id: str
    amount: int


@dataclass(frozen=True)
class Ended:
    """A grant whose remainder left by itself (expired) or was voided: what a `grant.expired`
    event carries — the grant, what left, the ledger row, the numbers before and after."""

    grant: Grant
    amount: int
    ledger_id: int
    before: policy.Numbers
    after: policy.Numbers


def _grant(row: sa.Row[Any]) -> Grant:
    return Grant(**{name: getattr(row, name) for name in Grant.__dataclass_fields__})


def validate(
    amount: object, priority: object, expires_at: dt.datetime | None, reason: str,
    idempotency_key: str | None, now: dt.datetime,
) -> None:
    """Raise `InvalidRequest` (code `invalid_grant`) saying what is wrong with a grant."""
    def bad(message: str) -> errors.InvalidRequest:
        return errors.InvalidRequest(message, code="invalid_grant")

    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise bad(f"amount must be an integer from 1 to {MAX_AMOUNT}, got {amount!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise bad(f"priority must be an integer from 0 to 100 (lower is spent first), "
                  f"got {priority!r}")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise bad("expiresAt must carry a time zone, e.g. 2026-03-01T00:00:00Z")
        if expires_at <= now:
            raise bad(f"expiresAt {expires_at.isoformat()} is not in the future")
    if not reason or not reason.strip() or len(reason) > MAX_REASON:
        raise bad(f"reason must say why the credits are granted (1 to {MAX_REASON} "
                  "characters)")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY:
        raise bad(f"idempotencyKey must be 1 to {MAX_KEY} characters")


def create_in(
    conn: Connection, instance_id: str, amount: int, *, reason: str, now: dt.datetime,
    priority: int = DEFAULT_PRIORITY, expires_at: dt.datetime | None = None,
    idempotency_key: str | None = None, source: str = Source.ADMIN,
    actor: str = enums.Actor.ADMIN, kind: str = enums.LedgerKind.GRANT,
) -> Made:
    """Make a grant (the caller holds the instance's lock); a key seen before answers the
    first grant, or raises `Conflict` when the parameters differ."""
    validate(amount, priority, expires_at, reason, idempotency_key, now)
    reason = reason.strip()
    if idempotency_key is not None:
        seen = conn.execute(sa.select(_g).where(
            _g.c.instance_id == instance_id, _g.c.idempotency_key == idempotency_key)).first()
        if seen is not None:
            first = _grant(seen)
            if (first.amount, first.priority, first.expires_at, first.reason) != (
                    amount, priority, expires_at, reason):
                raise errors.Conflict(
                    f"idempotencyKey {idempotency_key!r} was first used for grant {first.id} "
                    f"(amount {first.amount}, priority {first.priority}, expiresAt "
                    f"{first.expires_at.isoformat() if first.expires_at else 'none'}): use a "
                    "new key for a different grant", code="idempotency_key_reused")
            return Made(first, replayed=True)
    found = instances.read_numbers(conn, instance_id)
    if found is None:
        raise instances.UnknownInstance(instance_id)
    before, _version = found
    grant = Grant(new_id(), instance_id, amount, amount, priority, expires_at, reason,
                  str(source), idempotency_key, Status.LIVE, now, None)
    conn.execute(_g.insert().values(**vars(grant)))
    after = before._replace(bonus_credits=before.bonus_credits + amount)
    ledger_id = _write(conn, instance_id, kind, before, after, now=now, actor=actor,
                       correlation_id=idempotency_key, reason=reason, grant_id=grant.id)
    return Made(grant, ledger_id=ledger_id)


def create(
    engine: Engine, instance_id: str, amount: int, *, reason: str, now: dt.datetime,
    priority: int = DEFAULT_PRIORITY, expires_at: dt.datetime | None = None,
    idempotency_key: str | None = None, source: str = Source.ADMIN,
    actor: str = enums.Actor.ADMIN,
) -> Made:
    """`create_in()` in its own transaction, under the instance's lock; due expiries first."""
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        expire_in(conn, instance_id, now, actor=actor)
        return create_in(conn, instance_id, amount, reason=reason, now=now, priority=priority,
                         expires_at=expires_at, idempotency_key=idempotency_key,
                         source=source, actor=actor)


def void(
    engine: Engine, instance_id: str, grant_id: str, *, now: dt.datetime,
    reason: str | None = None, actor: str = enums.Actor.ADMIN,
) -> Ended:
    """Void a live grant: its remainder leaves, with a `grant_voided` ledger row."""
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        expire_in(conn, instance_id, now, actor=actor)
        row = conn.execute(sa.select(_g).where(
            _g.c.instance_id == instance_id, _g.c.id == grant_id)).first()
        if row is None:
            if instances.read_numbers(conn, instance_id) is None:
                raise instances.UnknownInstance(instance_id)
            raise errors.NotFound(f"instance {instance_id} has no grant {grant_id}",
                                  code="grant_not_found")
        grant = _grant(row)
        if grant.status != Status.LIVE:
            raise errors.Conflict(f"grant {grant_id} is {grant.status} already: only a live "
                                  "grant can be voided", code="grant_not_live")
        why = (reason or "").strip() or "voided"
        return _end(conn, grant, Status.VOIDED, enums.LedgerKind.GRANT_VOIDED, now=now,
                    actor=actor, reason=why)


def expire_in(
    conn: Connection, instance_id: str, now: dt.datetime, *, actor: str = enums.Actor.TIMER,
) -> list[Ended]:
    """End the instance's live grants whose `expires_at` has come (the caller holds the
    lock): each remainder leaves with a `grant_expired` ledger row."""
    due = conn.execute(sa.select(_g).where(
        _g.c.instance_id == instance_id, _g.c.status == Status.LIVE,
        _g.c.expires_at.is_not(None), _g.c.expires_at <= now).order_by(*ORDER)).all()
    return [_end(conn, _grant(row), Status.EXPIRED, enums.LedgerKind.GRANT_EXPIRED, now=now,
                 actor=actor, reason=f"grant {row.id} expired") for row in due]


def expire_due(engine: Engine, now: dt.datetime) -> list[Ended]:
    """The loop's step: expire every live grant due by `now`, one instance per transaction
    (each under its lock); returns what expired. Due grants are found through the partial
    index on live grants' `expires_at`, never by a scan of all grants."""
    expired: list[Ended] = []
    while True:
        with database.read(engine) as conn:
            ids = conn.execute(
                sa.select(_g.c.instance_id).where(_LIVE_WITH_EXPIRY, _g.c.expires_at <= now)
                .distinct().limit(EXPIRE_BATCH)).scalars().all()
        for instance_id in ids:
            with database.write(engine) as conn:
                database.lock_instance(conn, instance_id)
                expired += expire_in(conn, instance_id, now)
        if len(ids) < EXPIRE_BATCH:
            return expired


def _end(
    conn: Connection, grant: Grant, status: str, kind: str, *, now: dt.datetime, actor: str,
    reason: str,
) -> Ended:
    found = instances.read_numbers(conn, grant.instance_id)
    assert found is not None
    before, _version = found
    after = before._replace(bonus_credits=before.bonus_credits - grant.remaining)
    conn.execute(_g.update().where(_g.c.id == grant.id).values(
        remaining=0, status=status, ended_at=now))
    ledger_id = _write(conn, grant.instance_id, kind, before, after, now=now, actor=actor,
                       correlation_id=None, reason=reason, grant_id=grant.id)
    ended = Grant(**{**vars(grant), "remaining": 0, "status": status, "ended_at": now})
    if status == Status.EXPIRED and grant.remaining:  # written with the change it reports
        events.grant_expired(conn, grant.instance_id, before, after, ledger_id=ledger_id,
                             now=now, grant=event_view(ended, grant.remaining))
    return Ended(ended, grant.remaining, ledger_id, before, after)


def event_view(grant: Grant, expired: int) -> dict[str, Any]:
    """The grant as a `grant.expired` event carries it (the API's names)."""
    return {"grantId": grant.id, "amount": grant.amount, "expired": expired,
            "priority": grant.priority, "reason": grant.reason, "source": grant.source,
            "expiresAt": outbox.timestamp(grant.expires_at) if grant.expires_at else None}


def draw(conn: Connection, instance_id: str, amount: int, now: dt.datetime) -> list[Draw]:
    """Take `amount` from the instance's live grants in spending order (the caller holds the
    lock, has expired the due grants, and checked that the bonus covers `amount`; it
    updates `bonus_credits` and records the draws with `record_draws`)."""
    if amount <= 0:
        return []
    live = conn.execute(sa.select(_g.c.id, _g.c.remaining).where(
        _g.c.instance_id == instance_id, _g.c.status == Status.LIVE,
        sa.or_(_g.c.expires_at.is_(None), _g.c.expires_at > now)).order_by(*ORDER)).all()
    draws: list[Draw] = []
    left = amount
    for grant_id, remaining in live:
        if left == 0:
            break
        take = min(left, remaining)
        draws.append(Draw(grant_id, take))
        left -= take
        conn.execute(_g.update().where(_g.c.id == grant_id).values(
            remaining=remaining - take,
            **({"status": Status.SPENT, "ended_at": now} if take == remaining else {})))
    if left:
        raise RuntimeError(f"instance {instance_id}: live grants hold {amount - left}, not "
                           f"{amount} (bonus_credits disagrees with the grants)")
    return draws


def record_draws(conn: Connection, ledger_id: int, draws: Sequence[Draw]) -> None:
    """The parts of ledger row `ledger_id` that drew from several grants."""
    if draws:
        conn.execute(_draws.insert(), [
            {"ledger_id": ledger_id, "grant_id": d.grant_id, "amount": d.amount}
            for d in draws])


def _write(
    conn: Connection, instance_id: str, kind: str, before: policy.Numbers,
    after: policy.Numbers, *, now: dt.datetime, actor: str, correlation_id: str | None,
    reason: str, grant_id: str | None,
) -> int:
    """Set the instance's bonus to `after`'s (bumping `version`) and write the ledger row."""
    conn.execute(_i.update().where(_i.c.instance_id == instance_id).values(
        bonus_credits=after.bonus_credits, version=_i.c.version + 1, updated_at=now))
    return int(conn.execute(_ledger.insert().values(**ledger.entry(
        instance_id, kind, before, after, at=now, actor=actor, correlation_id=correlation_id,
        reason=reason, grant_id=grant_id)).returning(_ledger.c.id)).scalar_one())


def listing(engine: Engine, instance_id: str) -> list[Grant]:
    """The instance's live grants in spending order, then its newest ended ones."""
    with database.read(engine) as conn:
        if conn.execute(sa.select(_i.c.instance_id).where(
                _i.c.instance_id == instance_id)).first() is None:
            raise instances.UnknownInstance(instance_id)
        return listing_in(conn, instance_id)


def listing_in(conn: Connection, instance_id: str) -> list[Grant]:
    live = conn.execute(sa.select(_g).where(
        _g.c.instance_id == instance_id, _g.c.status == Status.LIVE).order_by(*ORDER)).all()
    ended = conn.execute(sa.select(_g).where(
        _g.c.instance_id == instance_id, _g.c.status != Status.LIVE)
        .order_by(_g.c.ended_at.desc(), _g.c.id).limit(LIST_ENDED)).all()
    return [_grant(row) for row in (*live, *ended)]
