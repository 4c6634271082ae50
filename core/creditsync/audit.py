"""The audit: ask the marketplace what each installed instance pays for, and heal what differs.

For each instance (the listed ones, or every installed one least recently checked first)
the marketplace's view (`marketplace.Client.lookup`) is compared with the plan our
subscription says the instance must be on now. When they differ, the observation goes into
the inbox as a `MarketplaceSnapshot` event and is applied by the same decision as a webhook
(`inbox.ingest`): newer than every event before it, older than any webhook after it. A
package the catalog cannot resolve is quarantined (nobody is downgraded) and alerted; an
error from the marketplace changes nothing and is counted. A dry run only reports.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import (
    alerts,
    catalog,
    clock,
    decision,
    enums,
    errors,
    inbox,
    marketplace,
    policy_store,
    subscription_store,
)
from creditsync.storage import database, models

log = logging.getLogger("creditsync.audit")

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS
_runs = models.SYNC_RUNS
MISSED_WEBHOOK = "missed_webhook"  # the alert key of a healed disagreement
UNANSWERED_RETRY = dt.timedelta(minutes=10)  # the periodic audit asks again this soon


@dataclass(frozen=True)
class Disagreement:
    """Our plan and the marketplace's for one instance, and what the audit did about it."""

    instance_id: str
    our_plan: str
    marketplace_plan: str  # a plan id, or the unresolvable package as the marketplace said it
    action: enums.AuditAction

    def as_json(self) -> dict[str, str]:
        return {"instanceId": self.instance_id, "ourPlan": self.our_plan,
                "marketplacePlan": self.marketplace_plan, "action": self.action.value}


@dataclass
class Report:
    """What one audit checked, found and did."""

    dry_run: bool
    started_at: dt.datetime
    checked: int = 0
    disagreed: int = 0
    healed: int = 0
    errors: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (instance, why)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every checked instance agrees or was healed, and none could not be checked."""
        if self.errors:
            return False
        if self.dry_run:
            return self.disagreed == 0
        return all(d.action in (enums.AuditAction.HEALED, enums.AuditAction.NONE)
                   for d in self.disagreements)

    def as_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "disagreed": self.disagreed, "healed": self.healed,
                "errors": self.errors,
                "disagreements": [d.as_json() for d in self.disagreements]}

    def line(self) -> str:
        return (f"audit{' (dry run)' if self.dry_run else ''}: checked {self.checked}, "
                f"disagreed {self.disagreed}, healed {self.healed}, errors {self.errors} in "
                f"{self.duration_s:.2f}s")


Progress = Callable[[int], None]


def installed(
    engine: Engine, *, limit: int, checked_before: dt.datetime | None = None,
    retry_before: dt.datetime | None = None,
) -> list[str]:
    """Installed instances, least recently checked first (never checked: first of all).

    `checked_before`: only those not checked since then (the periodic audit's due ones), and
    those the marketplace did not answer for when last asked before `retry_before`.
    """
    removed = sa.exists().where(_s.c.instance_id == _i.c.instance_id, _s.c.status == "removed")
    query = sa.select(_i.c.instance_id).where(~removed)
    if checked_before is not None:
        due = [_i.c.last_audited_at.is_(None), _i.c.last_audited_at < checked_before]
        if retry_before is not None:
            due.append(sa.and_(_i.c.last_audit_error.is_not(None),
                               _i.c.last_audited_at < retry_before))
        query = query.where(sa.or_(*due))
    query = query.order_by(_i.c.last_audited_at.is_not(None), _i.c.last_audited_at,
                           _i.c.instance_id).limit(limit)
    with database.read(engine) as conn:
        return list(conn.execute(query).scalars())


def queue(engine: Engine, instance_id: str) -> None:
    """Put the instance first in the audit's line (the marketplace did not answer now)."""
    with database.write(engine) as conn:
        conn.execute(_i.update().where(_i.c.instance_id == instance_id)
                     .values(last_audited_at=None))


def check(
    engine: Engine, client: marketplace.Client, instance_id: str, *, dry_run: bool = False,
    now: Callable[[], dt.datetime] = clock.utcnow,
) -> Disagreement | None:
    """Ask the marketplace about one instance; heal it unless `dry_run`. None: they agree.

    Raises `marketplace.MarketplaceUnavailable` or `marketplace.CredentialsRejected`
    (nothing changed).
    """
    seen = client.lookup(instance_id)
    with database.read(engine) as conn:
        cat = catalog.load(conn)
        ours = decision.desired(subscription_store.get(conn, instance_id), cat, seen.at,
                                policy_store.load(conn)).plan_id
    if seen.is_free:
        theirs: str | None = cat.default.id
    else:
        plan = cat.resolve(seen.package or "")
        theirs = plan.id if plan else None
    if theirs == ours:
        if not dry_run:
            _checked(engine, instance_id, now())
        return None
    shown = theirs or seen.package or "?"
    if dry_run:
        action = enums.AuditAction.QUARANTINED if theirs is None else enums.AuditAction.WOULD_HEAL
        return Disagreement(instance_id, ours, shown, action)
    status = inbox.ingest(engine, seen.as_event(), now=now()).status
    _checked(engine, instance_id, now())
    action = {enums.EventStatus.APPLIED: enums.AuditAction.HEALED,
              enums.EventStatus.QUARANTINED: enums.AuditAction.QUARANTINED,
              }.get(enums.EventStatus(status), enums.AuditAction.NONE)
    if status in (enums.EventStatus.PENDING, enums.EventStatus.FAILED):
        raise errors.Unavailable(f"the marketplace's view of {instance_id} is stored but could "
                                 f"not be applied yet ({status}); the retry loop applies it")
    return Disagreement(instance_id, ours, shown, action)


def run(
    engine: Engine, client: marketplace.Client, *, instance_ids: Sequence[str] | None = None,
    dry_run: bool = False, limit: int | None = None,
    checked_before: dt.datetime | None = None, progress: Progress | None = None,
    alerter: alerts.Alerter | None = None, should_stop: Callable[[], bool] = lambda: False,
    now: Callable[[], dt.datetime] = clock.utcnow,
) -> Report:
    """Audit `instance_ids`, or the installed instances (least recently checked first)."""
    started = time.perf_counter()
    report = Report(dry_run, now())
    ids = list(instance_ids) if instance_ids is not None else installed(
        engine, limit=limit or 1_000_000_000, checked_before=checked_before,
        retry_before=now() - UNANSWERED_RETRY)
    for instance_id in ids:
        if should_stop():
            break
        try:
            found = check(engine, client, instance_id, dry_run=dry_run, now=now)
        except (marketplace.MarketplaceUnavailable, marketplace.CredentialsRejected,
                errors.Unavailable) as exc:
            report.errors += 1
            report.failures.append((instance_id, exc.message))
            log.warning("audit: instance %s not checked: %s", instance_id, exc.message,
                        extra={"instance_id": instance_id, "error": exc.code})
            if not dry_run:  # asked again `UNANSWERED_RETRY` later, not a whole interval
                _checked(engine, instance_id, now(), error=exc.message)
        else:
            report.checked += 1
            if found is not None:
                report.disagreed += 1
                report.disagreements.append(found)
                if found.action == enums.AuditAction.HEALED:
                    report.healed += 1
                _announce(found, alerter)
        if progress is not None:
            progress(1)
    report.duration_s = time.perf_counter() - started
    if not dry_run and report.checked + report.errors:
        _record(engine, report, "all" if instance_ids is None else "instances")
    log.info(report.line(), extra={"audit": report.as_json() | {"disagreements": None}})
    return report


def ask(
    engine: Engine, client: marketplace.Client, instance_id: str, *,
    now: Callable[[], dt.datetime] = clock.utcnow, alerter: alerts.Alerter | None = None,
) -> tuple[Disagreement | None, str | None]:
    """Ask about one instance before acting on it (provisioning, Sync Credits).

    Returns what disagreed (None: they agree), or the marketplace's error: then nothing
    changed and the instance is first in line for the next audit.
    """
    try:
        found = check(engine, client, instance_id, now=now)
    except (marketplace.MarketplaceUnavailable, marketplace.CredentialsRejected,
            errors.Unavailable) as exc:
        log.warning("the marketplace could not be asked about %s: %s; queued for the next "
                    "audit", instance_id, exc.message,
                    extra={"instance_id": instance_id, "error": exc.code})
        queue(engine, instance_id)
        return None, exc.message
    if found is not None:
        _announce(found, alerter)
    return found, None


def _checked(
    engine: Engine, instance_id: str, at: dt.datetime, error: str | None = None
) -> None:
    """When it was last asked, and the marketplace's error if it did not answer."""
    with database.write(engine) as conn:
        conn.execute(_i.update().where(_i.c.instance_id == instance_id)
                     .values(last_audited_at=at, last_audit_error=error))


def _record(engine: Engine, report: Report, scope: str) -> None:
    """The audit as a sync run (trigger `audit`): checked, disagreed, healed, errors."""
    with database.write(engine) as conn:
        conn.execute(_runs.insert().values(
            id=str(uuid.uuid4()), trigger=enums.Trigger.AUDIT, scope=scope, dry_run=False,
            started_at=report.started_at,
            finished_at=report.started_at + dt.timedelta(seconds=report.duration_s),
            scanned=report.checked, drifted=report.disagreed, repaired=report.healed,
            failed=report.errors, duration_ms=int(report.duration_s * 1000)))


def _announce(found: Disagreement, alerter: alerts.Alerter | None) -> None:
    if found.action == enums.AuditAction.HEALED:
        text = (f"missed webhook healed: instance {found.instance_id} {found.our_plan} → "
                f"{found.marketplace_plan} (the marketplace says so)")
        log.warning(text, extra={"instance_id": found.instance_id, "plan": found.marketplace_plan})
        if alerter is not None:
            alerter.send(alerts.Alert(MISSED_WEBHOOK, "warning", "Missed webhook healed", text))
    elif found.action == enums.AuditAction.QUARANTINED:
        text = (f"the marketplace says instance {found.instance_id} pays for package "
                f"{found.marketplace_plan!r}, which no plan's id or aliases name: add it to "
                "the catalog; nobody was downgraded")
        log.warning(text, extra={"instance_id": found.instance_id})
        if alerter is not None:
            alerter.send(alerts.Alert("unknown_package", "warning", "Unknown marketplace package",
                                      text))
