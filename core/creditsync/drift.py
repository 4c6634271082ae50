"""Drift: which instances differ from what their subscription pays for, found in SQL.

`query()` is the SELECT of instances outer-joined with their subscription, with desired
plan and allocation computed in SQL (the catalog inlined as a `CASE`), and the drift test.
This is one of the two definitions of desired state; the other is `decision.desired` /
`policy.desired_plan_id` in Python. `tests/core/test_property.py` keeps them equal: change
both together. `scan()` and `drifted_in()` report without writing; the engine
(`convergence`) reads its batches through `drifted_batch()`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from creditsync import catalog, clock, plans, policy, policy_store
from creditsync.storage import database, models

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS


@dataclass(frozen=True)
class Drift:
    """One instance whose actual numbers differ from desired (what `check` lists)."""

    instance_id: str
    actual_plan: str
    desired_plan: str
    actual_credits_total: int
    desired_credits_total: int | None
    reason: str


def query(
    cat: plans.Catalog, now: dt.datetime, pol: policy.Policy
) -> tuple[sa.Select[tuple[object, ...]], sa.ColumnElement[bool]]:
    """The SELECT of instances with their desired state (unordered), and the drift test.

    The test reads only columns of the covering indexes `ix_instances_drift` and
    `ix_subscriptions_desired`, so a scan that finds nothing is index-only. An instance's
    allocation is checked against its own plan: when the plan is the desired one that is
    the desired allocation, and when it is not the plan test fires anyway.
    """
    cutoff = now - pol.expiry_grace_period
    paid = sa.and_(_s.c.status != "removed",
                   sa.or_(_s.c.expires_at.is_(None), _s.c.expires_at > cutoff))
    desired_plan = sa.func.coalesce(sa.case((paid, _s.c.plan_id)), cat.default.id)

    def credits_of(plan_id: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
        return sa.case({p.id: sa.literal(p.monthly_credits) for p in cat.plans},
                       value=plan_id, else_=sa.null())

    drift = sa.or_(
        _i.c.applied_rev != sa.func.coalesce(_s.c.rev, _i.c.applied_rev),
        _i.c.plan_id != desired_plan,
        _i.c.credits_total.is_distinct_from(credits_of(_i.c.plan_id)),
        _i.c.period_end <= now,
    )
    expired = sa.and_(_s.c.status != "removed", _s.c.expires_at <= cutoff)
    query = sa.select(
        _i.c.instance_id, _i.c.version, _i.c.plan_id, _i.c.credits_total,
        _i.c.credits_used_month, _i.c.bonus_credits, _i.c.period_start, _i.c.period_end,
        _i.c.applied_rev, sa.func.coalesce(_s.c.rev, 0).label("rev"),
        _s.c.source_time, sa.func.coalesce(expired, False).label("expired"),
        desired_plan.label("desired_plan"), credits_of(desired_plan).label("desired_credits"),
    ).select_from(_i.outerjoin(_s, _s.c.instance_id == _i.c.instance_id))
    return query, drift


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of the drift query: an instance's actual and desired state."""

    instance_id: str
    version: int
    actual: policy.Numbers
    desired: policy.Desired


def _candidates(rows: Sequence[Row[Any]], cat: plans.Catalog) -> list[Candidate]:
    out: list[Candidate] = []
    rules = {plan.id: plan.rollover for plan in cat.plans}
    for row in rows:
        (instance_id, version, plan_id, total, used, bonus, start, end, applied, rev,
         source_time, expired, desired_plan, desired_credits) = cast("tuple[Any, ...]", row)
        out.append(Candidate(
            instance_id, version,
            policy.Numbers(plan_id, total, used, bonus, start, end, applied),
            policy.Desired(desired_plan, desired_credits, rev, source_time, bool(expired),
                           rules.get(desired_plan))))
    return out


def drifted_batch(
    conn: Connection,
    cat: plans.Catalog,
    now: dt.datetime,
    pol: policy.Policy,
    ids: Sequence[str] | None,
    after: str | None,
    batch_size: int,
) -> list[Candidate]:
    """Up to `batch_size` drifted instances in id order, after `after`, within `ids`.

    Over all instances, an index-only pass finds the drifted ids first and the full rows
    are read for those alone, so a steady-state scan touches the covering indexes only.
    """
    select, drifted = query(cat, now, pol)
    if ids is None:
        find = (sa.select(_i.c.instance_id)
                .select_from(_i.outerjoin(_s, _s.c.instance_id == _i.c.instance_id))
                .where(drifted))
        if after is not None:
            find = find.where(_i.c.instance_id > after)
        found = conn.execute(find.order_by(_i.c.instance_id).limit(batch_size)).scalars().all()
        if not found:
            return []
        # read those rows in full; ids inlined as literals (thousands of bind parameters
        # cost more to process than the query)
        select = select.where(_i.c.instance_id.in_(
            sa.bindparam("found", list(found), expanding=True, literal_execute=True)))
    else:
        select = select.where(_i.c.instance_id.in_(ids))
        if after is not None:
            select = select.where(_i.c.instance_id > after)
    select = select.where(drifted).order_by(_i.c.instance_id).limit(batch_size)
    return _candidates(conn.execute(select).all(), cat)


def _drift(row: Candidate, now: dt.datetime, pol: policy.Policy) -> Drift:
    steps = policy.transition(row.actual, row.desired, now, pol)
    reason = "plan_missing" if row.desired.credits_total is None else (
        ",".join(step.kind for step in steps) or "in_sync")
    return Drift(row.instance_id, row.actual.plan_id, row.desired.plan_id,
                 row.actual.credits_total, row.desired.credits_total, reason)


def scan(
    engine: Engine,
    *,
    instance_ids: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    pol: policy.Policy | None = None,
    batch_size: int = 5000,
) -> Iterator[Drift]:
    """Yield every drifted instance with desired vs actual; writes nothing."""
    now = now or clock.utcnow()
    pol = policy_store.resolve(engine, pol)
    for chunk in id_chunks(instance_ids, batch_size):
        after: str | None = None
        while True:
            with database.read(engine) as conn:
                cat = catalog.load(conn)
                rows = drifted_batch(conn, cat, now, pol, chunk, after, batch_size)
            yield from (_drift(row, now, pol) for row in rows)
            if len(rows) < batch_size:
                break
            after = rows[-1].instance_id


def drifted_in(
    conn: Connection, instance_ids: Sequence[str], *, now: dt.datetime,
    pol: policy.Policy | None = None,
) -> list[Drift]:
    """The drift of a few instances, read inside the caller's transaction."""
    pol = pol if pol is not None else policy_store.load(conn)
    rows = drifted_batch(conn, catalog.load(conn), now, pol, instance_ids, None,
                          max(len(instance_ids), 1))
    return [_drift(row, now, pol) for row in rows]


def count_instances(engine: Engine, instance_ids: Sequence[str] | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(_i)
    with database.read(engine) as conn:
        if instance_ids is None:
            return int(conn.execute(query).scalar_one())
        total = 0
        for chunk in id_chunks(instance_ids, 5000):
            assert chunk is not None
            total += int(conn.execute(query.where(_i.c.instance_id.in_(chunk))).scalar_one())
        return total


def id_chunks(
    ids: Sequence[str] | None, size: int
) -> Iterator[Sequence[str] | None]:
    if ids is None:
        yield None
        return
    unique = sorted(set(ids))
    for start in range(0, len(unique), size):
        yield unique[start:start + size]
