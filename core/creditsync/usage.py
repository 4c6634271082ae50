"""Usage: consume credits atomically and idempotently; plan credits first, then grants
(`grants.draw`, in their spending order).

`draw` is the one spending order (plan credits, then bonus), used by a consume and by a
reservation's commit; `charge` the one write of a spend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import (
    convergence,
    enums,
    errors,
    events,
    grants,
    holds,
    instances,
    ledger,
    policy,
    policy_store,
)
from creditsync.storage import database, models

_i = models.INSTANCES
_ledger = models.LEDGER
_keys = models.USAGE_REQUESTS


InsufficientCredits = errors.InsufficientCredits


@dataclass(frozen=True)
class Consumption:
    """The result of one consume; `replayed` when the key was seen before."""

    instance_id: str
    amount: int
    from_plan: int
    from_bonus: int
    credits_remaining: int
    replayed: bool = False


@dataclass(frozen=True)
class Draw:
    """How an amount is drawn: `from_plan` (the period's usage grows) and `from_bonus`."""

    from_plan: int
    from_bonus: int


def draw(plan_left: int, bonus: int, amount: int) -> Draw:
    """The one spending order: plan credits first, then bonus.

    What exceeds both (only a commit can ask for that: its hold stays valid after a reset
    or a plan change left less than it holds) is charged to the plan's usage, so the
    period's usage may exceed its allocation; it is never taken from nothing silently."""
    from_plan = min(amount, plan_left)
    from_bonus = min(amount - from_plan, bonus)
    return Draw(amount - from_bonus, from_bonus)


def consume(
    engine: Engine, instance_id: str, amount: int, idempotency_key: str, *,
    now: dt.datetime, pol: policy.Policy | None = None,
) -> Consumption:
    """Charge `amount` credits once per `idempotency_key`.

    A key seen before answers its first result (`replayed`) when the amount is the same,
    and raises `IdempotencyConflict` when it is not (as Stripe does). Credits held by open
    reservations are not spendable.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise errors.InvalidRequest(f"amount must be a positive integer, got {amount!r}",
                                    code="invalid_consumption")
    if not idempotency_key:
        raise errors.InvalidRequest("idempotencyKey must not be empty",
                                    code="invalid_consumption")
    # a refusal (402) keeps what making room did — a due reset applied, holds and grants
    # past their time expired: the instance's own housekeeping, committed before answering
    refused: InsufficientCredits | None = None
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        row = _locked_with_key(conn, instance_id, idempotency_key)
        if row.seen_amount is not None:
            if row.seen_amount != amount:
                raise errors.IdempotencyConflict(idempotency_key, row.seen_amount, amount)
            return Consumption(instance_id, row.seen_amount, row.seen_from_plan,
                               row.seen_from_bonus, row.seen_remaining_after, replayed=True)
        row = current(conn, row, now=now, pol=pol, correlation_id=idempotency_key)
        row = spendable_at_least(conn, row, amount, now=now)
        left = spendable(row)
        if amount > left:
            refused = InsufficientCredits(instance_id, amount, left)
        else:
            def remember(taken: Draw) -> sa.Insert:  # the key's first result
                return _keys.insert().values(
                    instance_id=instance_id, idempotency_key=idempotency_key, amount=amount,
                    from_plan=taken.from_plan, from_bonus=taken.from_bonus,
                    remaining_after=left - amount, created_at=now)

            taken = charge(conn, row, amount, now=now, correlation_id=idempotency_key,
                           then=remember, pol=pol)
            return Consumption(instance_id, amount, taken.from_plan, taken.from_bonus,
                               left - amount)
    assert refused is not None
    raise refused


def spendable(row: sa.Row[Any]) -> int:
    """What the locked instance row can still spend (holds subtracted)."""
    return instances.remaining(row.credits_total, row.credits_used_month, row.bonus_credits,
                               row.credits_held)


def current(
    conn: Connection, row: sa.Row[Any], *, now: dt.datetime, pol: policy.Policy | None,
    correlation_id: str,
) -> sa.Row[Any]:
    """The locked row with its monthly reset applied first when it is due, and its grants
    past their `expiresAt` expired (an expired grant is never spent)."""
    fresh = row
    if row.period_end <= now:
        convergence.converge_in(conn, [row.instance_id], trigger="usage",
                                actor=enums.Actor.APP, correlation_id=correlation_id, now=now,
                                pol=pol)
        fresh = locked(conn, row.instance_id)
    if fresh.bonus_credits > 0 and grants.expire_in(conn, row.instance_id, now,
                                                    actor=enums.Actor.APP):
        fresh = locked(conn, row.instance_id)
    return fresh


def spendable_at_least(
    conn: Connection, row: sa.Row[Any], amount: int, *, now: dt.datetime,
) -> sa.Row[Any]:
    """When `amount` is more than is spendable and holds of this instance are past their
    TTL but not yet swept by the loop, expire them now (so an expired hold never refuses a
    spend), and answer the row re-read."""
    if row.credits_held == 0 or amount <= spendable(row):
        return row
    if holds.expire_instance(conn, row.instance_id, now=now) == 0:
        return row
    return locked(conn, row.instance_id)


def charge(
    conn: Connection, row: sa.Row[Any], amount: int, *, now: dt.datetime,
    correlation_id: str, released: int = 0,
    then: Callable[[Draw], sa.Insert | sa.Update] | None = None,
    pol: policy.Policy | None = None,
) -> Draw:
    """Charge `amount` to the locked instance `row` (the `draw` order) with its one `usage`
    ledger row and the events to the app it causes (`events.after_spend`); `released`: held
    credits freed in the same update (a commit); `then`: a write to make with them, built
    from the draw (a consume's idempotency row, a reservation's settlement). On PostgreSQL
    the three writes are one statement (data-modifying CTEs): one round trip on the hot
    path."""
    taken = draw(instances.plan_left(row.credits_total, row.credits_used_month),
                 row.bonus_credits, amount)
    before = instances.numbers_of(row)
    after = before._replace(credits_used=row.credits_used_month + taken.from_plan,
                            bonus_credits=row.bonus_credits - taken.from_bonus)
    update = _i.update().where(_i.c.instance_id == row.instance_id).values(
        credits_used_month=after.credits_used, bonus_credits=after.bonus_credits,
        credits_held=_i.c.credits_held - released, version=_i.c.version + 1, updated_at=now)
    entry = _ledger.insert().values(**ledger.entry(
        row.instance_id, enums.LedgerKind.USAGE, before, after, at=now, actor=enums.Actor.APP,
        correlation_id=correlation_id, reason=None)).returning(_ledger.c.id)
    last = then(taken) if then is not None else None
    draws = grants.draw(conn, row.instance_id, taken.from_bonus, now)
    if database.is_sqlite(conn):
        conn.execute(update)
        ledger_id = int(conn.execute(entry).scalar_one())
        if last is not None:
            conn.execute(last)
    else:
        written = entry.cte("entry")
        ctes = [update.cte("spent"), *([last.cte("last")] if last is not None else [])]
        ledger_id = int(conn.execute(sa.select(written.c.id).add_cte(*ctes)).scalar_one())
    grants.record_draws(conn, ledger_id, draws)
    events.after_spend(conn, row.instance_id, before, after, ledger_id=ledger_id, now=now,
                       pol=pol if pol is not None else policy_store.load(conn),
                       armed=(row.low_credits_sent, row.low_credits_period))
    return taken


def adjust_bonus(
    engine: Engine, instance_id: str, delta: int, reason: str, *, now: dt.datetime,
    actor: policy.Actor = enums.Actor.ADMIN,
) -> instances.HistoryEntry:
    """Grant (or take back) bonus credits; the reconciler never touches them.

    A positive delta is a grant without expiry; a negative one takes credits back from the
    live grants in their spending order (one `adjustment` row, its parts per grant in
    `ledger_grant_draws`).
    """
    if not reason or not reason.strip():
        raise errors.InvalidRequest("reason must say why the bonus credits change",
                                    code="invalid_adjustment")
    if delta == 0:
        raise errors.InvalidRequest("bonusCreditsDelta must not be 0",
                                    code="invalid_adjustment")
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        row = locked(conn, instance_id)
        grants.expire_in(conn, instance_id, now, actor=actor)
        if delta > 0:
            made = grants.create_in(conn, instance_id, delta, reason=reason, now=now,
                                    source=enums.GrantSource.ADMIN, actor=actor,
                                    kind=enums.LedgerKind.ADJUSTMENT)
            assert made.ledger_id is not None
            return _entry(conn, made.ledger_id)
        row = locked(conn, instance_id)
        after = row.bonus_credits + delta
        if after < 0:
            raise errors.InvalidRequest(
                f"instance {instance_id} has {row.bonus_credits} bonus credits; "
                f"taking {-delta} would make them negative", code="invalid_adjustment")
        before = instances.numbers_of(row)
        draws = grants.draw(conn, instance_id, -delta, now)
        conn.execute(_i.update().where(_i.c.instance_id == instance_id).values(
            bonus_credits=after, version=_i.c.version + 1, updated_at=now))
        ledger_id = conn.execute(_ledger.insert().values(**ledger.entry(
            instance_id, "adjustment", before, before._replace(bonus_credits=after), at=now,
            actor=actor, correlation_id=None, reason=reason.strip())).returning(_ledger.c.id)
        ).scalar_one()
        grants.record_draws(conn, ledger_id, draws)
        return _entry(conn, ledger_id)


def _entry(conn: Connection, ledger_id: int) -> instances.HistoryEntry:
    entry = conn.execute(sa.select(_ledger).where(_ledger.c.id == ledger_id)).one()
    return instances.HistoryEntry(
        **{k: v for k, v in entry._mapping.items() if k != "instance_id"})


def _locked_with_key(conn: Connection, instance_id: str, key: str) -> sa.Row[Any]:
    """The locked instance row and, as `seen_*`, the first result of `key` if any (one
    read: the lock is already held, so this statement sees every committed write)."""
    seen = _keys.alias("seen")
    query = sa.select(
        _i, seen.c.amount.label("seen_amount"), seen.c.from_plan.label("seen_from_plan"),
        seen.c.from_bonus.label("seen_from_bonus"),
        seen.c.remaining_after.label("seen_remaining_after"),
    ).select_from(_i.outerjoin(seen, sa.and_(seen.c.instance_id == _i.c.instance_id,
                                             seen.c.idempotency_key == key))
    ).where(_i.c.instance_id == instance_id)
    if not database.is_sqlite(conn):
        query = query.with_for_update(of=_i)
    row = conn.execute(query).first()
    if row is None:
        raise instances.UnknownInstance(instance_id)
    return row


def locked(conn: Connection, instance_id: str) -> sa.Row[tuple[object, ...]]:
    """The instance row, locked against concurrent writers until commit."""
    query = sa.select(_i).where(_i.c.instance_id == instance_id)
    if not database.is_sqlite(conn):
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise instances.UnknownInstance(instance_id)
    return row
