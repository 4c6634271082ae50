"""Usage: consume credits atomically and idempotently; plan credits first, then grants
(`grants.draw`, in their spending order)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import convergence, enums, errors, grants, instances, ledger, policy
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


def consume(
    engine: Engine, instance_id: str, amount: int, idempotency_key: str, *,
    now: dt.datetime, pol: policy.Policy | None = None,
) -> Consumption:
    """Charge `amount` credits once per `idempotency_key`.

    A key seen before answers its first result (`replayed`) when the amount is the same,
    and raises `IdempotencyConflict` when it is not (as Stripe does).
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise errors.InvalidRequest(f"amount must be a positive integer, got {amount!r}",
                                    code="invalid_consumption")
    if not idempotency_key:
        raise errors.InvalidRequest("idempotencyKey must not be empty",
                                    code="invalid_consumption")
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        row = _locked(conn, instance_id)
        seen = conn.execute(sa.select(_keys).where(
            _keys.c.instance_id == instance_id, _keys.c.idempotency_key == idempotency_key
        )).first()
        if seen is not None:
            if seen.amount != amount:
                raise errors.IdempotencyConflict(idempotency_key, seen.amount, amount)
            return Consumption(instance_id, seen.amount, seen.from_plan, seen.from_bonus,
                               seen.remaining_after, replayed=True)
        if row.period_end <= now:  # the monthly reset is due: apply it before charging
            convergence.converge_in(conn, [instance_id], trigger="usage", actor=enums.Actor.APP,
                                    correlation_id=idempotency_key, now=now, pol=pol)
            row = _locked(conn, instance_id)
        if grants.expire_in(conn, instance_id, now, actor=enums.Actor.APP):
            row = _locked(conn, instance_id)  # expired grants are not spent
        plan_left = max(row.credits_total - row.credits_used_month, 0)
        left = plan_left + row.bonus_credits
        if amount > left:
            raise InsufficientCredits(instance_id, amount, left)
        from_plan = min(amount, plan_left)
        from_bonus = amount - from_plan
        before = instances.numbers_of(row)
        after = before._replace(credits_used=row.credits_used_month + from_plan,
                                bonus_credits=row.bonus_credits - from_bonus)
        draws = grants.draw(conn, instance_id, from_bonus, now)
        conn.execute(_i.update().where(_i.c.instance_id == instance_id).values(
            credits_used_month=after.credits_used, bonus_credits=after.bonus_credits,
            version=_i.c.version + 1, updated_at=now))
        ledger_id = conn.execute(_ledger.insert().values(**ledger.entry(
            instance_id, "usage", before, after, at=now, actor=enums.Actor.APP,
            correlation_id=idempotency_key, reason=None)).returning(_ledger.c.id)).scalar_one()
        grants.record_draws(conn, ledger_id, draws)
        result = Consumption(instance_id, amount, from_plan, from_bonus, left - amount)
        conn.execute(_keys.insert().values(
            instance_id=instance_id, idempotency_key=idempotency_key, amount=amount,
            from_plan=from_plan, from_bonus=from_bonus, remaining_after=result.credits_remaining,
            created_at=now))
        return result


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
        _locked(conn, instance_id)
        grants.expire_in(conn, instance_id, now, actor=actor)
        if delta > 0:
            made = grants.create_in(conn, instance_id, delta, reason=reason, now=now,
                                    source=enums.GrantSource.ADMIN, actor=actor,
                                    kind=enums.LedgerKind.ADJUSTMENT)
            assert made.ledger_id is not None
            return _entry(conn, made.ledger_id)
        row = _locked(conn, instance_id)
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


def _locked(conn: Connection, instance_id: str) -> sa.Row[tuple[object, ...]]:
    """The instance row, locked against concurrent writers until commit."""
    query = sa.select(_i).where(_i.c.instance_id == instance_id)
    if not database.is_sqlite(conn):
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise instances.UnknownInstance(instance_id)
    return row
