"""Instances: provisioning, and the read views (credits, history) apps and admins see.

Reads never converge: `credits()` reports `inSync` from the same drift query the engine
uses, and only provisioning (a write) converges at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import catalog, convergence, decision, drift, enums, errors, ledger, policy
from creditsync.storage import database, models

_i = models.INSTANCES
_ledger = models.LEDGER
_runs = models.SYNC_RUNS


UnknownInstance = errors.UnknownInstance


@dataclass(frozen=True)
class Credits:
    """An instance's credits as apps see them (`GET /api/billing/credits`)."""

    instance_id: str
    plan: str
    credits_total: int
    bonus_credits: int
    credits_used: int
    credits_remaining: int
    credits_held: int
    period_start: dt.datetime
    period_end: dt.datetime
    in_sync: bool
    last_synced_at: dt.datetime | None


@dataclass(frozen=True)
class HistoryEntry:
    """One ledger row."""

    id: int
    at: dt.datetime
    kind: str
    actor: str
    correlation_id: str | None
    plan_before: str | None
    plan_after: str
    credits_total_before: int
    credits_total_after: int
    credits_used_before: int
    credits_used_after: int
    bonus_before: int
    bonus_after: int
    reason: str | None
    grant_id: str | None = None  # the grant this row changed, if one


remaining = policy.remaining
plan_left = policy.plan_left


def provision(
    engine: Engine, instance_id: str, *, now: dt.datetime, pol: policy.Policy | None = None,
    actor: policy.Actor = enums.Actor.PROVISION, correlation_id: str | None = None,
) -> convergence.Summary:
    """Create the instance if new (on the default plan), then converge it at once.

    A purchase that arrived before the install is applied here, so the instance has its
    paid credits the moment it exists.
    """
    with database.write(engine) as conn:
        database.lock_instance(conn, instance_id)
        create_if_missing(conn, instance_id, now, actor, correlation_id)
        return convergence.converge_in(
            conn, [instance_id], trigger="provision", actor=actor,
            correlation_id=correlation_id or f"provision:{instance_id}", now=now, pol=pol)


def create_if_missing(
    conn: Connection, instance_id: str, now: dt.datetime, actor: str,
    correlation_id: str | None,
) -> bool:
    """Insert a new instance on the default plan with its `provision` ledger row."""
    exists = conn.execute(sa.select(_i.c.instance_id).where(_i.c.instance_id == instance_id))
    if exists.first() is not None:
        return False
    numbers = decision.first_numbers(catalog.load(conn).default, now)
    conn.execute(_i.insert().values(
        instance_id=instance_id, **number_columns(numbers), bonus_credits=0, version=0,
        created_at=now, updated_at=now, last_synced_at=now))
    conn.execute(_ledger.insert().values(**ledger.provision_entry(
        instance_id, numbers, at=now, actor=actor, correlation_id=correlation_id)))
    return True


def number_columns(numbers: policy.Numbers) -> dict[str, Any]:
    """The instance columns that hold `numbers` (all but the bonus, which convergence
    never changes)."""
    return {column: getattr(numbers, name) for name, column in models.NUMBER_COLUMNS.items()}


def read_numbers(conn: Connection, instance_id: str) -> tuple[policy.Numbers, int] | None:
    """The instance's numbers and version, its row locked until commit (PostgreSQL)."""
    query = sa.select(_i.c.plan_id, _i.c.credits_total, _i.c.credits_used_month,
                      _i.c.bonus_credits, _i.c.period_start, _i.c.period_end,
                      _i.c.applied_rev, _i.c.version).where(_i.c.instance_id == instance_id)
    if not database.is_sqlite(conn):
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        return None
    return numbers_of(row), int(row.version)


def numbers_of(row: sa.Row[Any] | Any) -> policy.Numbers:
    """The numbers of an instance row (one read with the instances table's column names)."""
    return policy.Numbers(row.plan_id, row.credits_total, row.credits_used_month,
                          row.bonus_credits, row.period_start, row.period_end, row.applied_rev)


def credits(
    engine: Engine, instance_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> Credits:
    with database.read(engine) as conn:
        return credits_in(conn, instance_id, now=now, pol=pol)


def credits_in(
    conn: Connection, instance_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> Credits:
    row = conn.execute(sa.select(_i).where(_i.c.instance_id == instance_id)).first()
    if row is None:
        raise UnknownInstance(instance_id)
    in_sync = not drift.drifted_in(conn, [instance_id], now=now, pol=pol)
    last_full = conn.execute(
        sa.select(sa.func.max(_runs.c.started_at)).where(
            _runs.c.scope == "all", _runs.c.error.is_(None), _runs.c.finished_at.is_not(None),
            _runs.c.trigger != enums.Trigger.AUDIT)
    ).scalar_one()
    synced = [t for t in (row.last_synced_at, last_full) if t is not None]
    return Credits(
        instance_id=row.instance_id, plan=row.plan_id, credits_total=row.credits_total,
        bonus_credits=row.bonus_credits, credits_used=row.credits_used_month,
        credits_remaining=remaining(row.credits_total, row.credits_used_month,
                                    row.bonus_credits, row.credits_held),
        credits_held=row.credits_held, period_start=row.period_start,
        period_end=row.period_end, in_sync=in_sync,
        last_synced_at=max(synced) if synced else None,
    )


def history(
    engine: Engine, instance_id: str, *, limit: int = 50, before_id: int | None = None,
    require: bool = False,
) -> list[HistoryEntry]:
    """The instance's ledger, newest first; page with `before_id` (the last id seen).

    `require`: raise `UnknownInstance` for an instance never provisioned (rather than
    answer an empty page)."""
    query = sa.select(_ledger).where(_ledger.c.instance_id == instance_id)
    if before_id is not None:
        query = query.where(_ledger.c.id < before_id)
    query = query.order_by(_ledger.c.id.desc()).limit(limit)
    with database.read(engine) as conn:
        if require and conn.execute(sa.select(_i.c.instance_id).where(
                _i.c.instance_id == instance_id)).first() is None:
            raise UnknownInstance(instance_id)
        return [
            HistoryEntry(**{k: v for k, v in row._mapping.items() if k != "instance_id"})
            for row in conn.execute(query)
        ]
