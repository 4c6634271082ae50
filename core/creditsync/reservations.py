"""Reservations: hold credits for a job, then commit what it really used or release them.

A hold is not a balance change: it writes no ledger row, and only `instances.credits_held`
(the sum of the instance's open holds, kept in the same transaction) makes the held credits
unspendable for anyone else. A commit charges through `usage.charge` (the one spending
order), with ONE `usage` ledger row whose correlation id is the reservation's id, and frees
the rest. A hold past its TTL is expired by the loop (`expire_due`), the instance's numbers
untouched. A monthly reset or a plan change while a hold is open keeps the hold: its commit
is charged against the new period, and what it holds beyond what is left is charged to the
period's usage anyway (`usage.draw`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import enums, errors, holds, policy, usage
from creditsync.storage import database, models

_i = models.INSTANCES
_r = models.RESERVATIONS

Status = enums.ReservationStatus
DEFAULT_TTL = dt.timedelta(seconds=900)
MAX_TTL = dt.timedelta(days=1)


@dataclass(frozen=True)
class Reservation:
    id: str
    instance_id: str
    amount: int
    status: Status
    committed_amount: int | None
    created_at: dt.datetime
    expires_at: dt.datetime
    settled_at: dt.datetime | None
    replayed: bool = False

    @classmethod
    def of(cls, row: sa.Row[Any], *, replayed: bool = False) -> Reservation:
        return cls(row.id, row.instance_id, row.amount, Status(row.status),
                   row.committed_amount, row.created_at, row.expires_at, row.settled_at,
                   replayed)


class UnknownReservation(errors.NotFound):
    code = "reservation_not_found"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id} does not exist: use the "
                         "reservationId that creating it answered")


def reserve(
    engine: Engine, instance_id: str, amount: int, idempotency_key: str, *,
    ttl: dt.timedelta = DEFAULT_TTL, now: dt.datetime, pol: policy.Policy | None = None,
) -> Reservation:
    """Hold `amount` credits for `ttl`, once per `idempotency_key` (a retry answers the
    first hold, `replayed`; the key with another amount: `IdempotencyConflict`)."""
    _check_amount(amount, "amount")
    if not idempotency_key:
        raise errors.InvalidRequest("idempotencyKey must not be empty",
                                    code="invalid_reservation")
    if not dt.timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise errors.InvalidRequest(
            f"ttl must be 1 to {int(MAX_TTL.total_seconds())} seconds, got "
            f"{ttl.total_seconds():g}", code="invalid_reservation")
    refused: errors.InsufficientCredits | None = None  # committed first, as a consume's
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        row = usage.locked(conn, instance_id)
        seen = conn.execute(sa.select(_r).where(
            _r.c.instance_id == instance_id, _r.c.idempotency_key == idempotency_key)).first()
        if seen is not None:
            if seen.amount != amount:
                raise errors.IdempotencyConflict(idempotency_key, seen.amount, amount)
            return Reservation.of(seen, replayed=True)
        row = usage.current(conn, row, now=now, pol=pol, correlation_id=idempotency_key)
        row = usage.spendable_at_least(conn, row, amount, now=now)
        left = usage.spendable(row)
        if amount > left:
            refused = errors.InsufficientCredits(instance_id, amount, left)
        else:
            reservation_id = f"rsv_{secrets.token_urlsafe(18)}"  # unguessable
            values = {"id": reservation_id, "instance_id": instance_id,
                      "idempotency_key": idempotency_key, "amount": amount,
                      "committed_amount": None, "status": Status.HELD, "created_at": now,
                      "expires_at": now + ttl, "settled_at": None}
            hold = _r.insert().values(**values)
            held = _i.update().where(_i.c.instance_id == instance_id).values(
                credits_held=_i.c.credits_held + amount)
            if database.is_sqlite(conn):
                conn.execute(hold)
                conn.execute(held)
            else:  # one statement, one round trip
                conn.execute(hold.add_cte(held.cte("held")))
            return Reservation(reservation_id, instance_id, amount, Status.HELD, None, now,
                               now + ttl, None)
    assert refused is not None
    raise refused


def instance_of(engine: Engine, reservation_id: str) -> str:
    """The instance a reservation holds credits of (`UnknownReservation` if none)."""
    with database.read_once(engine) as conn:
        found = conn.execute(sa.select(_r.c.instance_id).where(
            _r.c.id == reservation_id)).scalar_one_or_none()
    if found is None:
        raise UnknownReservation(reservation_id)
    return str(found)


def get(engine: Engine, reservation_id: str) -> Reservation:
    with database.read(engine) as conn:
        row = conn.execute(sa.select(_r).where(_r.c.id == reservation_id)).first()
    if row is None:
        raise UnknownReservation(reservation_id)
    return Reservation.of(row)


def commit(
    engine: Engine, reservation_id: str, amount: int | None = None, *, now: dt.datetime,
    pol: policy.Policy | None = None,
) -> Reservation:
    """Charge `amount` (≤ held; None: all of it) and free the rest. A second commit answers
    the first (`replayed`); one with another amount, or of a released or expired hold, is
    a `Conflict`."""
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)
                               or amount < 0):
        raise errors.InvalidRequest(f"amount must be an integer ≥ 0, got {amount!r}",
                                    code="invalid_commit")
    with _settling(engine, reservation_id, now) as (conn, found):
        outcome = _commit(conn, found, amount, now, pol)
    if isinstance(outcome, errors.CreditsyncError):
        raise outcome  # after the transaction: an expiry found on the way is kept
    return outcome


def _commit(conn: Connection, found: Reservation, amount: int | None, now: dt.datetime,
            pol: policy.Policy | None) -> Reservation | errors.CreditsyncError:
    if found.status == Status.COMMITTED:
        if amount is not None and amount != found.committed_amount:
            return errors.Conflict(
                f"reservation {found.id} was committed with amount {found.committed_amount},"
                f" not {amount}", code="reservation_committed")
        return replace(found, replayed=True)
    if found.status != Status.HELD:
        return _settled(found, "committed")
    charged = found.amount if amount is None else amount
    if charged > found.amount:
        return errors.InvalidRequest(
            f"reservation {found.id} holds {found.amount} credits; {charged} cannot be "
            "committed: commit at most what it holds and consume the difference separately",
            code="commit_exceeds_hold")
    row = usage.locked(conn, found.instance_id)
    row = usage.current(conn, row, now=now, pol=pol, correlation_id=found.id)
    settled = _settlement(found, Status.COMMITTED, now, committed=charged)
    if charged:
        usage.charge(conn, row, charged, now=now, correlation_id=found.id,
                     released=found.amount, then=lambda _taken: settled, pol=pol)
    else:
        holds.release(conn, [(found.instance_id, found.amount)])
        conn.execute(*settled)
    return replace(found, status=Status.COMMITTED, committed_amount=charged, settled_at=now)


def release(engine: Engine, reservation_id: str, *, now: dt.datetime) -> Reservation:
    """Free all the held credits. Releasing again answers the first (`replayed`), as does
    releasing an expired hold; releasing a committed one is a `Conflict`."""
    with _settling(engine, reservation_id, now) as (conn, found):
        if found.status == Status.COMMITTED:
            outcome: Reservation | errors.CreditsyncError = _settled(found, "released")
        elif found.status != Status.HELD:
            outcome = replace(found, replayed=True)
        else:
            holds.release(conn, [(found.instance_id, found.amount)])
            outcome = _settle(conn, found, Status.RELEASED, now)
    if isinstance(outcome, errors.CreditsyncError):
        raise outcome
    return outcome


def expire_due(engine: Engine, *, now: dt.datetime) -> int:
    """Expire every hold past its TTL (the loop's step); how many."""
    return holds.expire_due(engine, now=now)


@contextmanager
def _settling(
    engine: Engine, reservation_id: str, now: dt.datetime,
) -> Iterator[tuple[Connection, Reservation]]:
    """The reservation's instance locked, the reservation read under the lock; a hold past
    its TTL is expired first (so it can no longer be committed)."""
    instance_id = instance_of(engine, reservation_id)
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        row = conn.execute(sa.select(_r).where(_r.c.id == reservation_id)).one()
        if row.status == Status.HELD and row.expires_at <= now:
            holds.expire_instance(conn, instance_id, now=now)
            row = conn.execute(sa.select(_r).where(_r.c.id == reservation_id)).one()
        yield conn, Reservation.of(row)


_SETTLE = _r.update().where(_r.c.id == sa.bindparam("r_id")).values(
    status=sa.bindparam("r_status"), committed_amount=sa.bindparam("r_committed"),
    settled_at=sa.bindparam("r_now"))


def _settlement(found: Reservation, status: Status, now: dt.datetime, *,
                committed: int | None = None) -> usage.Follow:
    return _SETTLE, {"r_id": found.id, "r_status": str(status), "r_committed": committed,
                     "r_now": now}


def _settle(conn: Connection, found: Reservation, status: Status, now: dt.datetime) -> (
        Reservation):
    conn.execute(*_settlement(found, status, now))
    return replace(found, status=status, settled_at=now)


def _settled(found: Reservation, action: str) -> errors.Conflict:
    why = {Status.RELEASED: "was released",
           Status.EXPIRED: "expired (past its TTL: its credits were freed)",
           Status.COMMITTED: "was committed"}[found.status]
    return errors.Conflict(f"reservation {found.id} {why}: it cannot be {action} now; "
                           "reserve again", code=f"reservation_{found.status}")


def _check_amount(amount: object, name: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise errors.InvalidRequest(f"{name} must be a positive integer, got {amount!r}",
                                    code="invalid_reservation")
