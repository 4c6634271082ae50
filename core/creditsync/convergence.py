"""The reconcile engine: converge instances to what their subscription pays for.

One `converge()` serves every trigger (timer, webhook, manual, plan change, CLI). It walks
the instances in keyset batches; SQL finds the drifted rows of a batch (desired plan and
allocation are computed in the query from the subscription and the catalog), `policy`
decides their new numbers, and one set-based write per batch applies them, guarded by
`version` so that usage recorded concurrently is never lost, with a ledger row per change.
`scan()` runs the same query and reports without writing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from creditsync import catalog, ledger, plans, policy, policy_store
from creditsync.storage import database, models

log = logging.getLogger("creditsync.convergence")

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS
_ledger = models.LEDGER
_runs = models.SYNC_RUNS

MAX_CONFLICT_ROUNDS = 5
KEEP_CHANGES = 1000


@dataclass(frozen=True)
class Change:
    """Everything convergence did (or would do) to one instance."""

    instance_id: str
    steps: tuple[policy.Step, ...]

    @property
    def before(self) -> policy.Numbers:
        return self.steps[0].before

    @property
    def after(self) -> policy.Numbers:
        return self.steps[-1].after

    @property
    def kinds(self) -> str:
        return ",".join(step.kind for step in self.steps)


@dataclass(frozen=True)
class Drift:
    """One instance whose actual numbers differ from desired (what `check` lists)."""

    instance_id: str
    actual_plan: str
    desired_plan: str
    actual_credits_total: int
    desired_credits_total: int | None
    reason: str


@dataclass
class Summary:
    """What one run found and did."""

    run_id: str
    trigger: str
    dry_run: bool
    started_at: dt.datetime
    scanned: int = 0
    drifted: int = 0
    repaired: int = 0
    failed: int = 0
    plan_missing: int = 0
    duration_s: float = 0.0
    changes: list[Change] = field(default_factory=list)
    missing_plans: set[str] = field(default_factory=set)

    def line(self) -> str:
        return (
            f"sync {self.trigger}{' (dry run)' if self.dry_run else ''}: scanned {self.scanned}, "
            f"drifted {self.drifted}, repaired {self.repaired}, failed {self.failed}, "
            f"plan missing {self.plan_missing} in {self.duration_s:.2f}s"
        )


Progress = Callable[[int], None]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _drift_query(
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


def drift_select(
    cat: plans.Catalog, now: dt.datetime, pol: policy.Policy
) -> tuple[sa.Select[tuple[object, ...]], sa.ColumnElement[bool]]:
    """Instances outer-joined with their subscription and desired state, and the drift test.

    For reports (admin listing, stats) that filter with the engine's own definition of drift.
    """
    return _drift_query(cat, now, pol)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of the drift query: an instance's actual and desired state."""

    instance_id: str
    version: int
    actual: policy.Numbers
    desired: policy.Desired


def _candidates(rows: Sequence[Row[Any]]) -> list[Candidate]:
    out: list[Candidate] = []
    for row in rows:
        (instance_id, version, plan_id, total, used, bonus, start, end, applied, rev,
         source_time, expired, desired_plan, desired_credits) = cast("tuple[Any, ...]", row)
        out.append(Candidate(
            instance_id, version,
            policy.Numbers(plan_id, total, used, bonus, start, end, applied),
            policy.Desired(desired_plan, desired_credits, rev, source_time, bool(expired))))
    return out


def _drifted_batch(
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
    query, drift = _drift_query(cat, now, pol)
    if ids is None:
        find = (sa.select(_i.c.instance_id)
                .select_from(_i.outerjoin(_s, _s.c.instance_id == _i.c.instance_id))
                .where(drift))
        if after is not None:
            find = find.where(_i.c.instance_id > after)
        found = conn.execute(find.order_by(_i.c.instance_id).limit(batch_size)).scalars().all()
        if not found:
            return []
        # read those rows in full; ids inlined as literals (thousands of bind parameters
        # cost more to process than the query)
        query = query.where(_i.c.instance_id.in_(
            sa.bindparam("found", list(found), expanding=True, literal_execute=True)))
    else:
        query = query.where(_i.c.instance_id.in_(ids))
        if after is not None:
            query = query.where(_i.c.instance_id > after)
    query = query.where(drift).order_by(_i.c.instance_id).limit(batch_size)
    return _candidates(conn.execute(query).all())


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
    now = now or utcnow()
    pol = policy_store.resolve(engine, pol)
    for chunk in _id_chunks(instance_ids, batch_size):
        after: str | None = None
        while True:
            with database.read(engine) as conn:
                cat = catalog.load(conn)
                rows = _drifted_batch(conn, cat, now, pol, chunk, after, batch_size)
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
    rows = _drifted_batch(conn, catalog.load(conn), now, pol, instance_ids, None,
                          max(len(instance_ids), 1))
    return [_drift(row, now, pol) for row in rows]


def count_instances(engine: Engine, instance_ids: Sequence[str] | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(_i)
    with database.read(engine) as conn:
        if instance_ids is None:
            return int(conn.execute(query).scalar_one())
        total = 0
        for chunk in _id_chunks(instance_ids, 5000):
            assert chunk is not None
            total += int(conn.execute(query.where(_i.c.instance_id.in_(chunk))).scalar_one())
        return total


def _id_chunks(
    ids: Sequence[str] | None, size: int
) -> Iterator[Sequence[str] | None]:
    if ids is None:
        yield None
        return
    unique = sorted(set(ids))
    for start in range(0, len(unique), size):
        yield unique[start:start + size]


def converge(
    engine: Engine,
    *,
    trigger: str,
    actor: policy.Actor,
    instance_ids: Sequence[str] | None = None,
    correlation_id: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    pol: policy.Policy | None = None,
    batch_size: int = 5000,
    progress: Progress | None = None,
    record_run: bool = True,
) -> Summary:
    """Converge all instances (or `instance_ids`) and return what was done.

    Idempotent: a second call right after changes nothing. A dry run writes nothing.
    """
    now = now or utcnow()
    pol = policy_store.resolve(engine, pol)  # read once per run, as the catalog per batch
    started = time.perf_counter()
    summary = Summary(str(uuid.uuid4()), trigger, dry_run, now)
    correlation = correlation_id or summary.run_id
    record = record_run and not dry_run
    if record:
        with database.write(engine) as conn:
            conn.execute(_runs.insert().values(
                id=summary.run_id, trigger=trigger, dry_run=False, started_at=now,
                scope="all" if instance_ids is None else "instances"))
    try:
        summary.scanned = count_instances(engine, instance_ids)
        conflicts = _run_pass(engine, summary, instance_ids, now, pol, batch_size, actor,
                              correlation, progress)
        rounds = 0
        while conflicts and rounds < MAX_CONFLICT_ROUNDS:
            rounds += 1
            summary.drifted -= len(conflicts)  # they are counted again when re-read
            conflicts = _run_pass(engine, summary, sorted(conflicts), now, pol, batch_size,
                                  actor, correlation, progress)
        summary.failed += len(conflicts)
        if instance_ids is not None and not dry_run:
            _touch(engine, instance_ids, now)
    except Exception as exc:
        summary.duration_s = time.perf_counter() - started
        if record:
            _finish(engine, summary, error=f"{type(exc).__name__}: {exc}")
        raise
    summary.duration_s = time.perf_counter() - started
    if record:
        _finish(engine, summary)
    log.info(summary.line(), extra={"run": _run_fields(summary)})
    return summary


def _run_pass(
    engine: Engine,
    summary: Summary,
    instance_ids: Sequence[str] | None,
    now: dt.datetime,
    pol: policy.Policy,
    batch_size: int,
    actor: policy.Actor,
    correlation: str,
    progress: Progress | None,
) -> set[str]:
    """One keyset walk; returns the ids whose write lost a race with concurrent usage."""
    conflicts: set[str] = set()
    for chunk in _id_chunks(instance_ids, batch_size):
        after: str | None = None
        while True:
            with database.write(engine) as conn:
                rows, changes, applied = _converge_batch(
                    conn, chunk, after, batch_size, now, pol, actor, correlation, summary)
            conflicts |= {c.instance_id for c in changes} - applied
            if progress is not None and rows:
                progress(len(rows))
            if len(rows) < batch_size:
                break
            after = rows[-1].instance_id
    return conflicts


def _converge_batch(
    conn: Connection,
    ids: Sequence[str] | None,
    after: str | None,
    batch_size: int,
    now: dt.datetime,
    pol: policy.Policy,
    actor: policy.Actor,
    correlation: str,
    summary: Summary,
) -> tuple[list[Candidate], list[Change], set[str]]:
    cat = catalog.load(conn)
    rows = _drifted_batch(conn, cat, now, pol, ids, after, batch_size)
    changes = _plan(rows, now, pol, summary)
    if changes and not summary.dry_run:
        applied = _apply(conn, changes, rows, now, actor, correlation)
    else:
        applied = {change.instance_id for change in changes}
    for change in changes:
        if change.instance_id in applied:
            summary.repaired += 1
            if len(summary.changes) < KEEP_CHANGES:
                summary.changes.append(change)
            log_change(change, summary.dry_run)
    return rows, changes, applied


def converge_in(
    conn: Connection,
    instance_ids: Sequence[str],
    *,
    trigger: str,
    actor: policy.Actor,
    correlation_id: str,
    now: dt.datetime,
    pol: policy.Policy | None = None,
    dry_run: bool = False,
) -> Summary:
    """Converge a few instances inside the caller's transaction (webhooks, provisioning).

    No sync-run row: the caller's event (webhook, install, usage) is the correlation.
    A write that loses a race with concurrent usage is re-read and retried at once.
    """
    pol = pol if pol is not None else policy_store.load(conn)
    summary = Summary(correlation_id, trigger, dry_run, now)
    pending: Sequence[str] = sorted(set(instance_ids))
    summary.scanned = len(pending)
    for _ in range(MAX_CONFLICT_ROUNDS):
        _rows, changes, applied = _converge_batch(
            conn, pending, None, max(len(pending), 1), now, pol, actor, correlation_id, summary)
        pending = sorted({c.instance_id for c in changes} - applied)
        if not pending:
            break
        summary.drifted -= len(pending)
    summary.failed = len(pending)
    if not dry_run:
        conn.execute(_i.update().where(_i.c.instance_id.in_(sorted(set(instance_ids))))
                     .values(last_synced_at=now))
    return summary


def _plan(
    rows: Sequence[Candidate], now: dt.datetime, pol: policy.Policy, summary: Summary,
) -> list[Change]:
    changes: list[Change] = []
    for row in rows:
        summary.drifted += 1
        if row.desired.credits_total is None:
            summary.plan_missing += 1
            summary.missing_plans.add(row.desired.plan_id)
        steps = policy.transition(row.actual, row.desired, now, pol)
        if steps:
            changes.append(Change(row.instance_id, tuple(steps)))
    return changes


def _apply(
    conn: Connection,
    changes: Sequence[Change],
    rows: Sequence[Candidate],
    now: dt.datetime,
    actor: str,
    correlation: str,
) -> set[str]:
    """Write `changes` guarded by the versions read; return the ids actually written."""
    versions = {row.instance_id: row.version for row in rows}
    if database.is_sqlite(conn):
        return _apply_sqlite(conn, changes, versions, now, actor, correlation)
    return _apply_postgres(conn, changes, versions, now, actor, correlation)


_COLUMNS = models.NUMBER_COLUMNS
_SQLITE_LEDGER = (f"INSERT INTO ledger ({', '.join(ledger.COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in ledger.COLUMNS)})")


def _sqlite_value(value: object) -> object:
    return models.sqlite_time(value) if isinstance(value, dt.datetime) else value


def _apply_sqlite(
    conn: Connection, changes: Sequence[Change], versions: dict[str, int], now: dt.datetime,
    actor: str, correlation: str,
) -> set[str]:
    # Straight to the driver: SQLAlchemy's per-row parameter processing would cost more
    # than the writes. BEGIN IMMEDIATE means no other writer ran since this transaction
    # read the rows, so the version guard cannot fail here; it stays as a safety net.
    raw = conn.connection.driver_connection
    assert raw is not None
    stamp = models.sqlite_time(now)
    # SQLite rewrites every index on a column named in SET, changed or not: so each
    # statement sets only the columns its rows change (a repair touches two of six).
    by_shape: dict[tuple[str, ...], list[Change]] = {}
    for c in changes:
        shape = tuple(f for f in _COLUMNS if getattr(c.before, f) != getattr(c.after, f))
        by_shape.setdefault(shape, []).append(c)
    for shape, group in by_shape.items():
        sets = "".join(f"{_COLUMNS[f]} = ?, " for f in shape)
        cursor = raw.executemany(
            f"UPDATE instances SET {sets}version = version + 1, updated_at = ?, "
            "last_synced_at = ? WHERE instance_id = ? AND version = ?",
            [(*(_sqlite_value(getattr(c.after, f)) for f in shape), stamp, stamp,
              c.instance_id, versions[c.instance_id]) for c in group])
        if cursor.rowcount != len(group):
            raise RuntimeError("an instance changed inside an IMMEDIATE transaction")
    raw.executemany(_SQLITE_LEDGER, [
        tuple(_sqlite_value(v) for v in ledger.row_values(ledger.step_entry(
            c.instance_id, step, at=now, actor=actor, correlation_id=correlation)))
        for c in changes for step in c.steps
    ])
    return {c.instance_id for c in changes}


# PostgreSQL: the batch is streamed with COPY into two session-local tables, then one
# statement applies it: version-guarded UPDATE … FROM, ledger rows for the rows written.
_PG_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS converge_updates (
    instance_id text PRIMARY KEY, version int, plan_id text, credits_total bigint,
    credits_used_month bigint, period_start timestamptz, period_end timestamptz,
    applied_rev int) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS converge_ledger (
    n int, instance_id text, kind text, plan_before text, plan_after text,
    total_before bigint, total_after bigint, used_before bigint, used_after bigint,
    bonus_before bigint, bonus_after bigint, reason text) ON COMMIT DELETE ROWS;
DELETE FROM converge_updates; DELETE FROM converge_ledger
"""
_PG_APPLY = """
WITH u AS (
    UPDATE instances AS i SET
        plan_id = v.plan_id, credits_total = v.credits_total,
        credits_used_month = v.credits_used_month, period_start = v.period_start,
        period_end = v.period_end, applied_rev = v.applied_rev, version = i.version + 1,
        updated_at = %(now)s, last_synced_at = %(now)s
    FROM converge_updates v WHERE i.instance_id = v.instance_id AND i.version = v.version
    RETURNING i.instance_id
), l AS (
    INSERT INTO ledger (instance_id, at, kind, actor, correlation_id, plan_before, plan_after,
        credits_total_before, credits_total_after, credits_used_before, credits_used_after,
        bonus_before, bonus_after, reason)
    SELECT e.instance_id, %(now)s, e.kind, %(actor)s, %(correlation)s, e.plan_before,
        e.plan_after, e.total_before, e.total_after, e.used_before, e.used_after,
        e.bonus_before, e.bonus_after, e.reason
    FROM converge_ledger e JOIN u ON u.instance_id = e.instance_id
    ORDER BY e.n
)
SELECT instance_id FROM u
"""


def _apply_postgres(
    conn: Connection, changes: Sequence[Change], versions: dict[str, int], now: dt.datetime,
    actor: str, correlation: str,
) -> set[str]:
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(_PG_STAGING)
        with cur.copy("COPY converge_updates FROM STDIN") as copy:
            for c in changes:
                a = c.after
                copy.write_row((c.instance_id, versions[c.instance_id], a.plan_id,
                                a.credits_total, a.credits_used, a.period_start, a.period_end,
                                a.applied_rev))
        with cur.copy("COPY converge_ledger FROM STDIN") as copy:
            n = 0
            for c in changes:
                for step in c.steps:
                    b, a = step.before, step.after
                    copy.write_row((n, c.instance_id, step.kind, b.plan_id, a.plan_id,
                                    b.credits_total, a.credits_total, b.credits_used,
                                    a.credits_used, b.bonus_credits, a.bonus_credits,
                                    step.reason))
                    n += 1
        if len(changes) > 100:  # a big batch: let the planner see it (index probes, no seq scan)
            cur.execute("ANALYZE converge_updates; SET LOCAL work_mem = '64MB'")
        cur.execute(_PG_APPLY, {"now": now, "actor": actor, "correlation": correlation})
        return {row[0] for row in cur.fetchall()}


def _touch(engine: Engine, instance_ids: Sequence[str], now: dt.datetime) -> None:
    """Mark explicitly synced instances as verified now (a one-instance sync's answer)."""
    with database.write(engine) as conn:
        for chunk in _id_chunks(instance_ids, 5000):
            assert chunk is not None
            conn.execute(_i.update().where(_i.c.instance_id.in_(chunk))
                         .values(last_synced_at=now))


def _finish(engine: Engine, summary: Summary, error: str | None = None) -> None:
    with database.write(engine) as conn:
        conn.execute(_runs.update().where(_runs.c.id == summary.run_id).values(
            finished_at=utcnow(), scanned=summary.scanned, drifted=summary.drifted,
            repaired=summary.repaired, failed=summary.failed,
            duration_ms=int(summary.duration_s * 1000), error=error,
        ))


def log_change(change: Change, dry_run: bool) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    before, after = change.before, change.after
    log.info(
        "instance %s: %d → %d credits (plan %s, %s)%s", change.instance_id,
        before.credits_total, after.credits_total, after.plan_id, change.kinds,
        " [dry run]" if dry_run else "",
        extra={"instance_id": change.instance_id, "kind": change.kinds,
               "credits_before": before.credits_total, "credits_after": after.credits_total,
               "plan": after.plan_id},
    )


def _run_fields(summary: Summary) -> dict[str, object]:
    return {
        "run_id": summary.run_id, "trigger": summary.trigger, "scanned": summary.scanned,
        "drifted": summary.drifted, "repaired": summary.repaired, "failed": summary.failed,
        "plan_missing": summary.plan_missing, "duration_s": round(summary.duration_s, 3),
    }
