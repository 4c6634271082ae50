"""Read-only reports for admins: instance listing, the webhook inbox, and dashboard stats.

Set-based SQL on SQLite and PostgreSQL; keyset pagination (no OFFSET); drift is judged by
the engine's own query (`drift.query`), so a report never disagrees with a sync.
Reads never converge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import catalog, drift, enums, inbox, instances, policy, policy_store
from creditsync.storage import database, models

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS
_e = models.WEBHOOK_EVENTS
_ledger = models.LEDGER

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset walk; `next_key` is None on the last page."""

    items: list[T]
    next_key: str | None


@dataclass(frozen=True)
class InstanceReport(instances.Credits):
    """An instance as admins see it: its credits beside what its subscription says."""

    drift_reason: str | None
    desired_plan: str
    desired_credits_total: int | None
    subscription_status: str | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class WebhookReport:
    """One inbox row."""

    event_id: str
    instance_id: str
    event_type: str
    product_id: str | None
    operation_time: dt.datetime
    received_at: dt.datetime
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    applied_at: dt.datetime | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class DayCount:
    day: dt.date
    count: int


@dataclass(frozen=True)
class PlanDayCredits:
    day: dt.date
    plan: str
    credits: int


@dataclass(frozen=True)
class Stats:
    """What the admin dashboard charts, over the `days` days up to `until`."""

    since: dt.datetime
    until: dt.datetime
    instances: int
    repairs_per_day: list[DayCount]
    webhooks_by_status: dict[str, int]
    credits_used_by_plan_per_day: list[PlanDayCredits]
    audit: AuditOverview


def instances_per_plan(engine: Engine) -> dict[str, int]:
    """How many instances are on each applied plan (the CLI's and the operator's counts)."""
    with database.read(engine) as conn:
        rows = conn.execute(sa.select(_i.c.plan_id, sa.func.count()).group_by(_i.c.plan_id))
        return {str(plan): int(n) for plan, n in rows}


def list_instances(
    engine: Engine, *, now: dt.datetime, pol: policy.Policy | None = None,
    drifted: bool | None = None,
    plan: str | None = None, removed: bool | None = None, q: str | None = None,
    limit: int = 50, after: str | None = None,
) -> Page[InstanceReport]:
    """Instances ordered by id, filtered; `after` is the previous page's `next_key`."""
    with database.read(engine) as conn:
        pol = pol if pol is not None else policy_store.load(conn)
        query, drifting = drift.query(catalog.load(conn), now, pol)
        query = _with_report_columns(query)
        if drifted is not None:
            query = query.where(drifting if drifted else sa.not_(drifting))
        if plan:
            query = query.where(_i.c.plan_id == plan)
        if removed is not None:
            is_removed = sa.and_(_s.c.status.is_not(None), _s.c.status == "removed")
            query = query.where(is_removed if removed else sa.not_(is_removed))
        if q:
            query = query.where(_i.c.instance_id.icontains(q, autoescape=True))
        if after is not None:
            query = query.where(_i.c.instance_id > after)
        rows = conn.execute(query.order_by(_i.c.instance_id).limit(limit + 1)).all()
        items = _reports(conn, rows[:limit], now, pol)
    return Page(items, items[-1].instance_id if len(rows) > limit else None)


def instance(
    engine: Engine, instance_id: str, *, now: dt.datetime, pol: policy.Policy | None = None
) -> InstanceReport:
    """One instance's report; raises `instances.UnknownInstance`."""
    with database.read(engine) as conn:
        pol = pol if pol is not None else policy_store.load(conn)
        query, _drift = drift.query(catalog.load(conn), now, pol)
        rows = conn.execute(
            _with_report_columns(query).where(_i.c.instance_id == instance_id)).all()
        if not rows:
            raise instances.UnknownInstance(instance_id)
        return _reports(conn, rows, now, pol)[0]


def _with_report_columns(query: sa.Select[Any]) -> sa.Select[Any]:
    """The drift query with what a report shows beside it (the subscription's status)."""
    return query.outerjoin(_s, _s.c.instance_id == _i.c.instance_id).add_columns(
        _i.c.credits_held, _i.c.last_synced_at, _i.c.created_at, _i.c.updated_at,
        _s.c.status.label("subscription_status"), _s.c.expires_at)


def _reports(
    conn: Connection, rows: Sequence[sa.Row[Any]], now: dt.datetime, pol: policy.Policy
) -> list[InstanceReport]:
    ids = [row.instance_id for row in rows]
    drifts = {d.instance_id: d for d in drift.drifted_in(conn, ids, now=now, pol=pol)}
    out: list[InstanceReport] = []
    for row in rows:
        found = drifts.get(row.instance_id)
        out.append(InstanceReport(
            instance_id=row.instance_id, plan=row.plan_id, credits_total=row.credits_total,
            bonus_credits=row.bonus_credits, credits_used=row.credits_used_month,
            credits_remaining=instances.remaining(row.credits_total, row.credits_used_month,
                                                  row.bonus_credits, row.credits_held),
            credits_held=row.credits_held,
            period_start=row.period_start, period_end=row.period_end, in_sync=found is None,
            drift_reason=found.reason if found else None, desired_plan=row.desired_plan,
            desired_credits_total=row.desired_credits,
            subscription_status=row.subscription_status, expires_at=row.expires_at,
            last_synced_at=row.last_synced_at, created_at=row.created_at,
            updated_at=row.updated_at))
    return out


def list_webhooks(
    engine: Engine, *, status: str | None = None, instance_id: str | None = None,
    limit: int = 50, after: str | None = None,
) -> Page[WebhookReport]:
    """Inbox rows, newest first; `after` is the previous page's `next_key`.

    Raises ValueError for a key this function did not hand out.
    """
    query = sa.select(_e)
    if status:
        query = query.where(_e.c.status == status)
    if instance_id:
        query = query.where(_e.c.instance_id == instance_id)
    if after is not None:
        received, event_id = _split_webhook_key(after)
        query = query.where(sa.or_(
            _e.c.received_at < received,
            sa.and_(_e.c.received_at == received, _e.c.id < event_id)))
    query = query.order_by(_e.c.received_at.desc(), _e.c.id.desc()).limit(limit + 1)
    with database.read(engine) as conn:
        rows = conn.execute(query).all()
    items = [
        WebhookReport(
            event_id=row.id, instance_id=row.instance_id, event_type=row.event_type,
            product_id=row.product_id, operation_time=row.operation_time,
            received_at=row.received_at, status=row.status, attempts=row.attempts,
            last_error=row.last_error, next_attempt_at=row.next_attempt_at,
            applied_at=row.applied_at, payload=dict(row.payload or {}))
        for row in rows[:limit]
    ]
    last = items[-1] if len(rows) > limit else None
    return Page(items, f"{last.received_at.isoformat()}|{last.event_id}" if last else None)


def _split_webhook_key(key: str) -> tuple[dt.datetime, str]:
    received, sep, event_id = key.partition("|")
    if not sep or not event_id:
        raise ValueError("not a webhook page key")
    moment = dt.datetime.fromisoformat(received)
    if moment.tzinfo is None:
        raise ValueError("not a webhook page key")
    try:  # as the database compares it; year 1 at +14:00 has no UTC time
        return moment.astimezone(dt.UTC), event_id
    except OverflowError as exc:
        raise ValueError("not a webhook page key") from exc


def stats(engine: Engine, *, now: dt.datetime, days: int = 30) -> Stats:
    """Drift repairs per day, webhooks by status, and credits used by plan per day."""
    until = now
    since = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
    with database.read(engine) as conn:
        day = _day(conn, _ledger.c.at)
        repairs = conn.execute(
            sa.select(day.label("day"), sa.func.count().label("n"))
            .where(_ledger.c.kind == "drift_repair", _ledger.c.at >= since,
                   _ledger.c.at <= until)
            .group_by(day).order_by(day)).all()
        used = (_ledger.c.credits_used_after - _ledger.c.credits_used_before
                + _ledger.c.bonus_before - _ledger.c.bonus_after)
        usage = conn.execute(
            sa.select(day.label("day"), _ledger.c.plan_after, sa.func.sum(used).label("n"))
            .where(_ledger.c.kind == "usage", _ledger.c.at >= since, _ledger.c.at <= until)
            .group_by(day, _ledger.c.plan_after).order_by(day, _ledger.c.plan_after)).all()
        total = int(conn.execute(sa.select(sa.func.count()).select_from(_i)).scalar_one())
    return Stats(
        since=since, until=until, instances=total,
        repairs_per_day=[DayCount(_as_date(r.day), int(r.n)) for r in repairs],
        webhooks_by_status=inbox.counts(engine),
        credits_used_by_plan_per_day=[
            PlanDayCredits(_as_date(r.day), r.plan_after, int(r.n or 0)) for r in usage],
        audit=audit_overview(engine, now=now, days=days),
    )


def _day(conn: Connection, column: sa.ColumnElement[dt.datetime]) -> sa.ColumnElement[Any]:
    """The UTC calendar day of a timestamp column."""
    if database.is_sqlite(conn):
        return sa.func.date(column)
    return sa.cast(sa.func.timezone("UTC", column), sa.Date)


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


BACKLOG = enums.BACKLOG


def inbox_backlog(engine: Engine) -> dict[str, int]:
    """Events waiting, by status: pending (retried), quarantined, failed (uses the index)."""
    query = (sa.select(_e.c.status, sa.func.count()).where(_e.c.status.in_(BACKLOG))
             .group_by(_e.c.status))
    with database.read(engine) as conn:
        found = {str(status): int(n) for status, n in conn.execute(query)}
    return {status: found.get(status, 0) for status in BACKLOG}


def last_full_run_drifted(engine: Engine) -> int | None:
    """How many instances the latest finished full convergence run found drifted; for a
    full scan after a tick, those the ticks missed (what its tick converged was announced
    change, not drift)."""
    runs = models.SYNC_RUNS
    query = (sa.select(sa.func.coalesce(runs.c.missed, runs.c.drifted))
             .where(runs.c.scope == "all", runs.c.dry_run.is_(False),
                    runs.c.finished_at.is_not(None), runs.c.error.is_(None),
                    runs.c.trigger != enums.Trigger.AUDIT)
             .order_by(runs.c.started_at.desc()).limit(1))
    with database.read(engine) as conn:
        found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def last_full_scan_missed(engine: Engine) -> int | None:
    """What the latest finished full scan found that the incremental ticks had missed
    (None: no full scan yet); 0 in a correct system."""
    runs = models.SYNC_RUNS
    query = (sa.select(runs.c.missed)
             .where(runs.c.missed.is_not(None), runs.c.finished_at.is_not(None),
                    runs.c.error.is_(None))
             .order_by(runs.c.started_at.desc()).limit(1))
    with database.read(engine) as conn:
        found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


@dataclass(frozen=True)
class AuditDay:
    day: dt.date
    checked: int
    disagreed: int
    healed: int
    errors: int


@dataclass(frozen=True)
class Unanswered:
    """An instance the marketplace could not answer for at its last check."""

    instance_id: str
    checked_at: dt.datetime | None
    error: str


@dataclass(frozen=True)
class AuditOverview:
    """The marketplace audit for the admin: its last run, its days, who went unanswered."""

    last_run_at: dt.datetime | None
    last: AuditDay | None  # the last run's counts (its `day` is the run's day)
    per_day: list[AuditDay]
    never_checked: int
    unanswered_count: int
    unanswered: list[Unanswered]


def audit_overview(
    engine: Engine, *, now: dt.datetime, days: int = 30, limit: int = 50
) -> AuditOverview:
    """Audit runs (sync runs with trigger `audit`) per day, the last one, and the instances
    whose last check failed (set-based: a few aggregate queries)."""
    runs = models.SYNC_RUNS
    since = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
    audits = runs.c.trigger == enums.Trigger.AUDIT
    with database.read(engine) as conn:
        day = _day(conn, runs.c.started_at)
        rows = conn.execute(
            sa.select(day.label("day"), sa.func.sum(runs.c.scanned), sa.func.sum(runs.c.drifted),
                      sa.func.sum(runs.c.repaired), sa.func.sum(runs.c.failed))
            .where(audits, runs.c.started_at >= since, runs.c.started_at <= now)
            .group_by(day).order_by(day)).all()
        last = conn.execute(sa.select(runs).where(audits)
                            .order_by(runs.c.started_at.desc()).limit(1)).first()
        never = conn.execute(sa.select(sa.func.count()).select_from(_i)
                             .where(_i.c.last_audited_at.is_(None))).scalar_one()
        failing = _i.c.last_audit_error.is_not(None)
        count = conn.execute(sa.select(sa.func.count()).select_from(_i).where(failing)
                             ).scalar_one()
        unanswered = conn.execute(
            sa.select(_i.c.instance_id, _i.c.last_audited_at, _i.c.last_audit_error)
            .where(failing).order_by(_i.c.last_audited_at.desc(), _i.c.instance_id)
            .limit(limit)).all()
    return AuditOverview(
        last_run_at=last.started_at if last else None,
        last=AuditDay(last.started_at.date(), last.scanned, last.drifted, last.repaired,
                      last.failed) if last else None,
        per_day=[AuditDay(_as_date(r[0]), int(r[1] or 0), int(r[2] or 0), int(r[3] or 0),
                          int(r[4] or 0)) for r in rows],
        never_checked=int(never), unanswered_count=int(count),
        unanswered=[Unanswered(r.instance_id, r.last_audited_at, r.last_audit_error)
                    for r in unanswered])
