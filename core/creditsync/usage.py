"""Usage: consume credits atomically and idempotently; plan credits first, then grants
(`grants.draw`, in their spending order).

`draw` is the one spending order (plan credits, then bonus), used by a consume and by a
reservation's commit; `charge` the one write of a spend."""

from __future__ import annotations

import datetime as dt
import functools
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

# A write made with a spend, built once with bind parameters (`then` of `charge`): its
# statement and its parameters. The hot path's statements are built once, so a request
# pays for no statement construction, only for its parameters.
Follow = tuple[sa.Insert | sa.Update, dict[str, Any]]

_SPEND = _i.update().where(_i.c.instance_id == sa.bindparam("s_instance")).values(
    credits_used_month=sa.bindparam("s_used"), bonus_credits=sa.bindparam("s_bonus"),
    credits_held=_i.c.credits_held - sa.bindparam("s_released"), version=_i.c.version + 1,
    updated_at=sa.bindparam("s_now"))
_ENTRY = _ledger.insert().values(
    {column: sa.bindparam(f"l_{column}") for column in ledger.COLUMNS}).returning(_ledger.c.id)
_REMEMBER = _keys.insert().values(
    {column: sa.bindparam(f"k_{column}") for column in (
        "instance_id", "idempotency_key", "amount", "from_plan", "from_bonus",
        "remaining_after", "created_at")})


@functools.cache
def _spend_statement(then: sa.Insert | sa.Update | None) -> sa.Select[Any]:
    """PostgreSQL: the spend, its ledger row and `then` in one statement (data-modifying
    CTEs), one round trip; built once per `then` statement."""
    written = _ENTRY.cte("entry")
    ctes = [_SPEND.cte("spent"), *([then.cte("last")] if then is not None else [])]
    return sa.select(written.c.id).add_cte(*ctes)


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
            def remember(taken: Draw) -> Follow:  # the key's first result
                return _REMEMBER, {
                    "k_instance_id": instance_id, "k_idempotency_key": idempotency_key,
                    "k_amount": amount, "k_from_plan": taken.from_plan,
                    "k_from_bonus": taken.from_bonus, "k_remaining_after": left - amount,
                    "k_created_at": now}

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
    then: Callable[[Draw], Follow] | None = None,
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
    spend = {"s_instance": row.instance_id, "s_used": after.credits_used,
             "s_bonus": after.bonus_credits, "s_released": released, "s_now": now}
    entry = {f"l_{column}": value for column, value in ledger.entry(
        row.instance_id, enums.LedgerKind.USAGE, before, after, at=now, actor=enums.Actor.APP,
        correlation_id=correlation_id, reason=None).items()}
    last, last_params = then(taken) if then is not None else (None, {})
    draws = grants.draw(conn, row.instance_id, taken.from_bonus, now)
    if database.is_sqlite(conn):
        conn.execute(_SPEND, spend)
        ledger_id = int(conn.execute(_ENTRY, entry).scalar_one())
        if last is not None:
            conn.execute(last, last_params)
    else:
        ledger_id = int(conn.execute(_spend_statement(last),
                                     {**spend, **entry, **last_params}).scalar_one())
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


_seen = _keys.alias("seen")
_WITH_KEY = sa.select(
    _i, _seen.c.amount.label("seen_amount"), _seen.c.from_plan.label("seen_from_plan"),
    _seen.c.from_bonus.label("seen_from_bonus"),
    _seen.c.remaining_after.label("seen_remaining_after"),
).select_from(_i.outerjoin(_seen, sa.and_(_seen.c.instance_id == _i.c.instance_id,
                                          _seen.c.idempotency_key == sa.bindparam("key")))
).where(_i.c.instance_id == sa.bindparam("instance"))
_WITH_KEY_LOCKED = _WITH_KEY.with_for_update(of=_i)


def _locked_with_key(conn: Connection, instance_id: str, key: str) -> sa.Row[Any]:
    """The locked instance row and, as `seen_*`, the first result of `key` if any (one
    read: the lock is already held, so this statement sees every committed write)."""
    query = _WITH_KEY if database.is_sqlite(conn) else _WITH_KEY_LOCKED
    row = conn.execute(query, {"key": key, "instance": instance_id}).first()
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
