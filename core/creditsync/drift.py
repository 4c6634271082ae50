"""Drift: which instances differ from what their subscription pays for, found in SQL.

`query()` is the SELECT of instances with desired plan and allocation computed in SQL from
the instance's copy of its subscription (the catalog inlined as a `CASE`), and the drift
test. This is one of the two definitions of desired state; the other is `decision.desired` /
`policy.desired_plan_id` in Python. `tests/core/test_property.py` keeps them equal: change
both together. A scan walks ranges of instances, counting them and finding the drifted
ones in the same pass (`scan_range`, `drifted_ids`); the drifted rows are then read in full
by id (`drifted_batch`). `scan()` and `drifted_in()` report without writing;
the engine (`convergence`) converges what `drifted_ids` finds.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from creditsync import catalog, clock, plans, policy, policy_store
from creditsync.storage import database, models

_i = models.INSTANCES
SCAN_SIZE = 100_000  # instances per range of a scan (one statement each)


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

    Both read the instance row alone: its copy of the subscription's desired fields
    (`paid_plan_id`, `paid_until`, `subscription_rev`, `subscription_time`, kept equal to
    the subscription by the schema's triggers) beside its actual numbers, so the test is a
    comparison of the row's own columns, with no join. An instance's allocation is checked
    against its own plan: when the plan is the desired one that is the desired allocation,
    and when it is not the plan test fires anyway.
    """
    cutoff = now - pol.expiry_grace_period
    paid_plan = sa.case((sa.or_(_i.c.paid_until.is_(None), _i.c.paid_until > cutoff),
                         _i.c.paid_plan_id))
    desired_plan = sa.func.coalesce(paid_plan, cat.default.id)

    def credits_of(plan_id: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
        return sa.case({p.id: sa.literal(p.monthly_credits) for p in cat.plans},
                       value=plan_id, else_=sa.null())

    drift = sa.or_(
        _i.c.applied_rev != sa.func.coalesce(_i.c.subscription_rev, _i.c.applied_rev),
        _i.c.plan_id != desired_plan,
        _i.c.credits_total.is_distinct_from(credits_of(_i.c.plan_id)),
        _i.c.period_end <= now,
    )
    expired = sa.and_(_i.c.paid_plan_id.is_not(None), _i.c.paid_until <= cutoff)
    query = sa.select(
        _i.c.instance_id, _i.c.version, _i.c.plan_id, _i.c.credits_total,
        _i.c.credits_used_month, _i.c.bonus_credits, _i.c.period_start, _i.c.period_end,
        _i.c.applied_rev, sa.func.coalesce(_i.c.subscription_rev, 0).label("rev"),
        _i.c.subscription_time, sa.func.coalesce(expired, False).label("expired"),
        desired_plan.label("desired_plan"), credits_of(desired_plan).label("desired_credits"),
    ).select_from(_i)
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


@dataclass(frozen=True)
class Range:
    """One pass of the drift test over a range of instances: how many it read and the
    drifted ids among them (sorted)."""

    scanned: int
    drifted: list[str]


def scan_range(
    conn: Connection, cat: plans.Catalog, now: dt.datetime, pol: policy.Policy,
    where: sa.ColumnElement[bool],
) -> Range:
    """Count the instances `where` selects and find the drifted ones, in one pass."""
    _select, drifted = query(cat, now, pol)
    found = sa.select(_i.c.instance_id, drifted.label("drifted")).where(where).subquery()
    collect = (sa.func.json_group_array if database.is_sqlite(conn) else sa.func.array_agg)
    count, ids = conn.execute(sa.select(
        sa.func.count(), collect(found.c.instance_id).filter(found.c.drifted))).one()
    if isinstance(ids, str):  # SQLite's JSON array
        ids = json.loads(ids)
    return Range(int(count), sorted(ids or ()))


def drifted_ids(
    engine: Engine, now: dt.datetime, pol: policy.Policy, ids: Sequence[str] | None = None,
) -> Iterator[Range]:
    """A scan of every instance (or of `ids`), range by range, each with its count and its
    drifted ids.

    Every instance is read in ranges of its table's physical storage (blocks of the heap
    on PostgreSQL, `rowid`s on SQLite): a sequential read with no index and no join, each
    range's ids held alone, all in one snapshot so that each row is counted once however
    the rows move meanwhile. `ids` are read by primary key, `SCAN_SIZE` at a time.
    """
    if ids is not None:
        for chunk in id_chunks(ids, SCAN_SIZE):
            with database.read(engine) as conn:
                yield scan_range(conn, catalog.load(conn), now, pol,
                                 _i.c.instance_id.in_(chunk))
        return
    with database.snapshot(engine) as conn:
        cat = catalog.load(conn)
        for where in _physical_ranges(conn):
            yield scan_range(conn, cat, now, pol, where)


def drifted_batch(
    conn: Connection,
    cat: plans.Catalog,
    now: dt.datetime,
    pol: policy.Policy,
    ids: Sequence[str],
) -> list[Candidate]:
    """The drifted instances of `ids` (read in full), in id order."""
    select, drifted = query(cat, now, pol)
    # ids inlined as literals (thousands of bind parameters cost more to process than the
    # query)
    select = select.where(_i.c.instance_id.in_(
        sa.bindparam("ids", list(ids), expanding=True, literal_execute=True)), drifted)
    return _candidates(conn.execute(select.order_by(_i.c.instance_id)).all(), cat)


_ROWID: sa.ColumnElement[int] = sa.literal_column("instances.rowid")
_CTID: sa.ColumnElement[str] = sa.literal_column("instances.ctid")
ROWS_PER_BLOCK = 50  # about what a PostgreSQL heap block of instances holds


def _physical_ranges(conn: Connection) -> Iterator[sa.ColumnElement[bool]]:
    """Conditions that cover every row of `instances` once, about `SCAN_SIZE` rows each:
    `rowid` ranges on SQLite (an update keeps a row's `rowid`), block ranges of `ctid`
    on PostgreSQL (a TID range scan; what the snapshot sees lies in the blocks that
    existed when it was taken)."""
    if database.is_sqlite(conn):
        top = conn.execute(sa.select(sa.func.max(_ROWID)).select_from(_i)).scalar() or 0
        for low in range(0, int(top), SCAN_SIZE):
            yield sa.and_(low < _ROWID, low + SCAN_SIZE >= _ROWID)
        return
    blocks = int(conn.execute(sa.text(
        "SELECT pg_relation_size('instances') / current_setting('block_size')::int"))
        .scalar_one())
    step = max(SCAN_SIZE // ROWS_PER_BLOCK, 1)
    for low in range(0, blocks, step):
        yield sa.and_(sa.literal_column(f"'({low},0)'::tid") <= _CTID,
                      sa.literal_column(f"'({low + step},0)'::tid") > _CTID)


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
    for _scanned, found in _ranges(engine, instance_ids, now, pol, batch_size):
        yield from found


def check(
    engine: Engine,
    *,
    instance_ids: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    pol: policy.Policy | None = None,
    batch_size: int = 5000,
) -> tuple[int, list[Drift]]:
    """How many instances a scan read (counted as it read them), and the drifted ones."""
    scanned, drifted = 0, []
    for count, found in _ranges(engine, instance_ids, now, pol, batch_size):
        scanned += count
        drifted += found
    return scanned, drifted


def _ranges(
    engine: Engine, instance_ids: Sequence[str] | None, now: dt.datetime | None,
    pol: policy.Policy | None, batch_size: int,
) -> Iterator[tuple[int, list[Drift]]]:
    now = now or clock.utcnow()
    pol = policy_store.resolve(engine, pol)
    for found in drifted_ids(engine, now, pol, instance_ids):
        drifts: list[Drift] = []
        for chunk in id_chunks(found.drifted, batch_size):
            with database.read(engine) as conn:
                rows = drifted_batch(conn, catalog.load(conn), now, pol, chunk)
            drifts += (_drift(row, now, pol) for row in rows)
        yield found.scanned, drifts


def drifted_in(
    conn: Connection, instance_ids: Sequence[str], *, now: dt.datetime,
    pol: policy.Policy | None = None,
) -> list[Drift]:
    """The drift of a few instances, read inside the caller's transaction."""
    pol = pol if pol is not None else policy_store.load(conn)
    rows = drifted_batch(conn, catalog.load(conn), now, pol, instance_ids)
    return [_drift(row, now, pol) for row in rows]


def id_chunks(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    unique = sorted(set(ids))
    for start in range(0, len(unique), size):
        yield unique[start:start + size]
