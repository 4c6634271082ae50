"""The reconcile engine: converge instances to what their subscription pays for.

One `converge()` serves every trigger (webhook, manual, plan change, CLI); `tick()`
converges only what can have changed (the candidate sets of `changes`), and `full_scan()`
audits the ticks: a tick, then a full converge whose changes the ticks missed. It walks
the instances in ranges, counting them as it reads; SQL finds the drifted rows of a range
(`drift`: desired plan and allocation are computed in the query from the instance's copy
of its subscription and the catalog), they are read in full in batches,
`policy` decides their new numbers, and one set-based write per batch applies them
(`storage.converge_sqlite`, `storage.converge_pg`), guarded by `version` so that usage
recorded concurrently is never lost, with a ledger row per change and the events to the app
it causes (`events.after_changes`, in the batch's transaction). `drift.scan()` runs the
same query and reports without writing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from creditsync import catalog, changes, clock, drift, enums, events, policy, policy_store
from creditsync.storage import converge_pg, converge_sqlite, database, models

log = logging.getLogger("creditsync.convergence")

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS
_ledger = models.LEDGER
_runs = models.SYNC_RUNS

MAX_CONFLICT_ROUNDS = 5
KEEP_CHANGES = 1000


@dataclass
class Summary:
    """What one run found and did.

    `scope`: `all` (a full converge), `instances` (the ids a caller named) or `changed` (a
    tick: the candidate sets of `changes`). `changed`: instances it found a change for.
    `missed`: in a full scan that follows a tick, the instances it changed that no tick
    had been told about (None in any other run); 0 in a correct system.
    """

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
    changes: list[policy.Change] = field(default_factory=list)
    missing_plans: set[str] = field(default_factory=set)
    scope: str = "all"
    changed: int = 0
    missed: int | None = None
    candidates: dict[str, int] = field(default_factory=dict)  # a tick: ids per set
    # a full scan after a tick: the tick's candidates (what it changes there is not missed)
    announced: frozenset[str] | None = field(default=None, repr=False)

    def line(self) -> str:
        missed = "" if self.missed is None else f", missed by ticks {self.missed}"
        return (
            f"sync {self.trigger}{' (dry run)' if self.dry_run else ''}: scanned {self.scanned}, "
            f"drifted {self.drifted}, repaired {self.repaired}, failed {self.failed}, "
            f"plan missing {self.plan_missing}{missed} in {self.duration_s:.2f}s"
        )


Progress = Callable[[int], None]
Body = Callable[[Summary, str], None]


@dataclass(frozen=True)
class _Run:
    """What every pass of one run works with: its summary, its moment and policy, its
    batch size, who acts and under which correlation, and where progress goes."""

    engine: Engine
    summary: Summary
    now: dt.datetime
    pol: policy.Policy
    batch_size: int
    actor: policy.Actor
    correlation: str
    progress: Progress | None = None
# a batch being written: its rows, its changes, and the ids its write applied
InFlight = tuple[list[drift.Candidate], list[policy.Change],
                 concurrent.futures.Future[set[str]]]


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
    now = now or clock.utcnow()
    pol = policy_store.resolve(engine, pol)  # read once per run, as the catalog per batch

    def body(summary: Summary, correlation: str) -> None:
        _execute(_Run(engine, summary, now, pol, batch_size, actor, correlation, progress),
                 instance_ids, count=True)
        if instance_ids is not None and not dry_run:
            _touch(engine, instance_ids, now)

    scope = "all" if instance_ids is None else "instances"
    return _recorded(engine, Summary(str(uuid.uuid4()), trigger, dry_run, now, scope=scope),
                     correlation_id, record_run, body)


def tick(
    engine: Engine,
    *,
    trigger: str = enums.Trigger.TICK,
    actor: policy.Actor = enums.Actor.TIMER,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    pol: policy.Policy | None = None,
    batch_size: int = 5000,
    record_run: bool = True,
) -> Summary:
    """Converge what can have changed since the last tick (`changes.collect`), not every
    instance: what it costs follows what changed, not how many instances there are.

    A dry run writes nothing and leaves the queues as they are.
    """
    now = now or clock.utcnow()
    pol = policy_store.resolve(engine, pol)

    def body(summary: Summary, correlation: str) -> None:
        _tick_pass(_Run(engine, summary, now, pol, batch_size, actor, correlation))

    return _recorded(engine, Summary(str(uuid.uuid4()), trigger, dry_run, now, scope="changed"),
                     None, record_run, body, row_first=False)


def full_scan(
    engine: Engine,
    *,
    trigger: str = enums.Trigger.FULL_SCAN,
    actor: policy.Actor = enums.Actor.TIMER,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    pol: policy.Policy | None = None,
    batch_size: int = 5000,
    progress: Progress | None = None,
    record_run: bool = True,
) -> Summary:
    """The audit of the ticks: a tick, then a full converge at the same `now`.

    What the full converge still changes, no tick had been told about (a hand edit in the
    database, a path that forgot to queue): it is counted in `missed`, 0 in a correct
    system. Everything up to this run's expiry cutoff is converged afterwards.
    """
    now = now or clock.utcnow()
    pol = policy_store.resolve(engine, pol)

    def body(summary: Summary, correlation: str) -> None:
        run = _Run(engine, summary, now, pol, batch_size, actor, correlation, progress)
        if dry_run:  # nothing converges: the full pass alone counts, announced or not
            with database.read(engine) as conn:
                pending = changes.collect(conn, now, pol.expiry_grace_period)
        else:
            pending = _tick_pass(run)
        summary.announced = frozenset(pending.instance_ids)
        summary.missed = 0
        summary.scanned = 0  # the full pass counts what it reads
        _execute(run, None, count=True)
        summary.announced = None
        if not dry_run:
            with database.write(engine) as conn:
                changes.mark_expiry(conn, now - pol.expiry_grace_period, now)

    return _recorded(engine, Summary(str(uuid.uuid4()), trigger, dry_run, now), None,
                     record_run, body)


def _recorded(engine: Engine, summary: Summary, correlation_id: str | None, record_run: bool,
              body: Body, *, row_first: bool = True) -> Summary:
    """Run `body` as one recorded sync run (no row for a dry run), timed and logged.

    The run's row is written when it starts and completed when it ends; with `row_first`
    False (a tick: milliseconds, every interval) it is written once, when it ends."""
    started = time.perf_counter()
    correlation = correlation_id or summary.run_id
    record = record_run and not summary.dry_run
    if record and row_first:
        with database.write(engine) as conn:
            conn.execute(_runs.insert().values(_run_row(summary)))
    try:
        body(summary, correlation)
    except Exception as exc:
        summary.duration_s = time.perf_counter() - started
        if record:
            _finish(engine, summary, row_first, error=f"{type(exc).__name__}: {exc}")
        raise
    summary.duration_s = time.perf_counter() - started
    if record:
        _finish(engine, summary, row_first)
    log.info(summary.line(), extra={"run": _run_fields(summary)})
    return summary


def _execute(run: _Run, instance_ids: Sequence[str] | None, *, count: bool = False) -> set[str]:
    """Converge `instance_ids` (None: all), re-reading the writes that lost a race with
    concurrent usage; returns those that still lost after `MAX_CONFLICT_ROUNDS`. With
    `count`, the first pass adds the instances it reads to `scanned`."""
    summary = run.summary
    conflicts = _run_pass(run, instance_ids, count=count)
    rounds = 0
    while conflicts and rounds < MAX_CONFLICT_ROUNDS:
        rounds += 1
        summary.drifted -= len(conflicts)  # they are counted again when re-read
        summary.changed -= len(conflicts)
        if summary.missed is not None:
            summary.missed -= len(conflicts - (summary.announced or frozenset()))
        conflicts = _run_pass(run, sorted(conflicts))
    summary.failed += len(conflicts)
    return conflicts


def _tick_pass(run: _Run) -> changes.Pending:
    """Converge the candidate sets; queue what lost its race again; mark the sets done."""
    engine, summary, now = run.engine, run.summary, run.now
    with database.read(engine) as conn:
        pending = changes.collect(conn, now, run.pol.expiry_grace_period)
        if not pending.instance_ids:  # nothing to converge: one read for both
            _missing_plans(conn, summary)
    summary.candidates = dict(pending.sets)
    summary.scanned += len(pending.instance_ids)
    failed: set[str] = set()
    if pending.instance_ids:
        # its candidates are not what a caller's progress counts (a full scan's drifted rows)
        failed = _execute(dataclasses.replace(run, progress=None), pending.instance_ids)
        with database.read(engine) as conn:
            _missing_plans(conn, summary)
    if not summary.dry_run:
        with database.write(engine) as conn:
            changes.enqueue(conn, failed, now)
            changes.done(conn, pending, now)
    return pending


def _missing_plans(conn: Connection, summary: Summary) -> None:
    """A tick reports the instances on plans the catalog lacks as a full scan would (an
    index probe per plan in use), so a tick never clears a `PlanMissing`."""
    known = {plan.id for plan in catalog.read_plans(conn)}
    missing = sorted(set(changes.plans_in_use(conn)) - known)
    on_missing = changes.count_on(conn, missing)
    summary.missing_plans |= set(missing)
    summary.plan_missing = max(summary.plan_missing, on_missing)


def _run_pass(run: _Run, instance_ids: Sequence[str] | None, *, count: bool = False
              ) -> set[str]:
    """One walk: each range's drifted ids (counted as it reads them, with `count`) are read
    in full and planned in batches. On PostgreSQL each batch is written by a second thread
    while the next one is read and planned (the server writes one batch as Python plans the
    next: both cores work); a batch is then read and written in two transactions, and the
    write is guarded by the versions read, so what changed in between loses its race and
    is re-read, as concurrent usage. On SQLite (one writer, in this process: a second
    thread only contends) each batch is read, planned and written in one `BEGIN
    IMMEDIATE`. Returns the ids whose write lost a race with concurrent usage."""
    engine, summary, now, pol = run.engine, run.summary, run.now, run.pol
    actor, correlation, progress = run.actor, run.correlation, run.progress
    conflicts: set[str] = set()

    def chunks() -> Iterator[Sequence[str]]:
        for found in drift.drifted_ids(engine, now, pol, instance_ids):
            if count:
                summary.scanned += found.scanned
            yield from drift.id_chunks(found.drifted, run.batch_size)

    def written(rows: list[drift.Candidate], planned: list[policy.Change],
                applied: set[str]) -> None:
        conflicts.update({c.instance_id for c in planned} - applied)
        if progress is not None and rows:
            progress(len(rows))

    if database.is_sqlite(engine):
        for chunk in chunks():
            with database.write(engine) as conn:
                written(*_converge_batch(conn, chunk, now, pol, actor, correlation, summary))
        return conflicts

    def planned_batches() -> Iterator[tuple[list[drift.Candidate], list[policy.Change]]]:
        for chunk in chunks():
            with database.read(engine) as conn:
                rows = drift.drifted_batch(conn, catalog.load(conn), now, pol, chunk)
            yield rows, _plan(rows, now, pol, summary)

    def write(rows: list[drift.Candidate], planned: list[policy.Change]) -> set[str]:
        if not planned or summary.dry_run:
            return {change.instance_id for change in planned}
        with database.write(engine) as conn:
            return _apply(conn, planned, rows, now, actor, correlation)

    def settle(batch: InFlight) -> None:
        rows, planned, future = batch
        applied = future.result()
        _record(summary, planned, applied)
        written(rows, planned, applied)

    with concurrent.futures.ThreadPoolExecutor(1, "converge-writer") as writer:
        previous: InFlight | None = None
        for rows, planned in planned_batches():
            if previous is not None:
                settle(previous)
            previous = (rows, planned, writer.submit(write, rows, planned))
        if previous is not None:
            settle(previous)
    return conflicts


def _converge_batch(
    conn: Connection,
    ids: Sequence[str],
    now: dt.datetime,
    pol: policy.Policy,
    actor: policy.Actor,
    correlation: str,
    summary: Summary,
) -> tuple[list[drift.Candidate], list[policy.Change], set[str]]:
    """Read, plan and write `ids` inside the caller's transaction."""
    cat = catalog.load(conn)
    rows = drift.drifted_batch(conn, cat, now, pol, ids)
    planned = _plan(rows, now, pol, summary)
    if planned and not summary.dry_run:
        applied = _apply(conn, planned, rows, now, actor, correlation)
    else:
        applied = {change.instance_id for change in planned}
    _record(summary, planned, applied)
    return rows, planned, applied


def _record(summary: Summary, planned: Sequence[policy.Change], applied: set[str]) -> None:
    """Count and log the changes of a batch that were written."""
    for change in planned:
        if change.instance_id in applied:
            summary.repaired += 1
            if len(summary.changes) < KEEP_CHANGES:
                summary.changes.append(change)
            log_change(change, summary.dry_run)


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
        _rows, planned, applied = _converge_batch(
            conn, pending, now, pol, actor, correlation_id, summary)
        pending = sorted({c.instance_id for c in planned} - applied)
        if not pending:
            break
        summary.drifted -= len(pending)
        summary.changed -= len(pending)
    summary.failed = len(pending)
    if not dry_run:
        conn.execute(_i.update().where(_i.c.instance_id.in_(sorted(set(instance_ids))))
                     .values(last_synced_at=now))
    return summary


def _plan(
    rows: Sequence[drift.Candidate], now: dt.datetime, pol: policy.Policy, summary: Summary,
) -> list[policy.Change]:
    planned: list[policy.Change] = []
    for row in rows:
        summary.drifted += 1
        if row.desired.credits_total is None:
            summary.plan_missing += 1
            summary.missing_plans.add(row.desired.plan_id)
        steps = policy.transition(row.actual, row.desired, now, pol)
        if steps:
            planned.append(policy.Change(row.instance_id, tuple(steps)))
    summary.changed += len(planned)
    if summary.missed is not None:
        announced = summary.announced or frozenset()
        summary.missed += sum(1 for change in planned if change.instance_id not in announced)
    return planned


def _apply(
    conn: Connection,
    planned: Sequence[policy.Change],
    rows: Sequence[drift.Candidate],
    now: dt.datetime,
    actor: str,
    correlation: str,
) -> set[str]:
    """Write `planned` guarded by the versions read, and their events to the app (in the
    same transaction); return the ids actually written."""
    versions = {row.instance_id: row.version for row in rows}
    if database.is_sqlite(conn):
        applied, ledger_ids = converge_sqlite.apply(conn, planned, versions, now, actor,
                                                    correlation)
    else:
        applied, ledger_ids = converge_pg.apply(conn, planned, versions, now, actor, correlation)
    events.after_changes(conn, [c for c in planned if c.instance_id in applied], ledger_ids,
                         now=now)
    return applied


def _touch(engine: Engine, instance_ids: Sequence[str], now: dt.datetime) -> None:
    """Mark explicitly synced instances as verified now (a one-instance sync's answer)."""
    with database.write(engine) as conn:
        for chunk in drift.id_chunks(instance_ids, 5000):
            conn.execute(_i.update().where(_i.c.instance_id.in_(chunk))
                         .values(last_synced_at=now))


def _run_row(summary: Summary) -> dict[str, object]:
    """A run's row as it starts."""
    return {"id": summary.run_id, "trigger": summary.trigger, "dry_run": False,
            "started_at": summary.started_at, "scope": summary.scope}


def _finish(engine: Engine, summary: Summary, row_written: bool,
            error: str | None = None) -> None:
    done = {"finished_at": clock.utcnow(), "scanned": summary.scanned,
            "drifted": summary.drifted, "repaired": summary.repaired, "failed": summary.failed,
            "missed": summary.missed, "duration_ms": int(summary.duration_s * 1000),
            "error": error}
    with database.write(engine) as conn:
        if row_written:
            conn.execute(_runs.update().where(_runs.c.id == summary.run_id).values(done))
        else:
            conn.execute(_runs.insert().values({**_run_row(summary), **done}))


def log_change(change: policy.Change, dry_run: bool) -> None:
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
        "scope": summary.scope, "missed": summary.missed, "candidates": summary.candidates,
    }
