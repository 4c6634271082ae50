"""The convergence loop of `creditsync run`, and the guarded run it shares with the operator.

A full scan at start-up and every `full_scan_interval`; in between, every `interval`, an
incremental tick that converges only what can have changed (`convergence.tick`). Each run
first retries due inbox events, converges with the stored policy (`policy_store`) and holds
the convergence lock, so two runners (operator or standalone) never converge at once.
Inbox retries, the expiry of reservations past their TTL and grant expiries run more often
(every `retry_every`, `frequent`) so a failed webhook is not left waiting, an abandoned hold
frees its credits soon, and a grant's remainder leaves within seconds of its `expiresAt`.
An `alerter` gets the drift, missed, webhook and degraded alerts of `creditsync.alerts`.
With a `deliverer` (the app's webhook URL is configured) a third thread delivers the
outbox's events to the app every second.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Engine

from creditsync import (
    alerts,
    audit,
    clock,
    convergence,
    enums,
    grants,
    inbox,
    locks,
    marketplace,
    outbox,
    policy,
    reservations,
)

log = logging.getLogger("creditsync.runner")

RunHook = Callable[[convergence.Summary], None]
AuditHook = Callable[[audit.Report], None]
DeliveryHook = Callable[[dict[str, int]], None]
DELIVER_EVERY = dt.timedelta(seconds=1)  # how often the outbox is looked at
AUDIT_BATCH_S = 30.0  # one audit batch: about this many seconds of marketplace requests
AUDIT_IDLE_S = 10.0  # how long the audit sleeps when nothing is due


class Run(Protocol):
    def __call__(self, engine: Engine, *, trigger: str, actor: policy.Actor,
                 pol: policy.Policy | None, batch_size: int,
                 dry_run: bool) -> convergence.Summary: ...


# which triggers converge only what changed, and which scan everything after a tick (the
# others, e.g. `cli` or `manual`, are a plain full converge)
RUNS: dict[str, Run] = {
    enums.Trigger.TICK: convergence.tick,
    enums.Trigger.PLAN_CHANGE: convergence.tick,
    enums.Trigger.STARTUP: convergence.full_scan,
    enums.Trigger.FULL_SCAN: convergence.full_scan,
}


def retry_inbox(engine: Engine) -> dict[str, int]:
    """Retry the inbox events that are due; their outcomes by status."""
    outcomes = inbox.retry_due(engine, now=clock.utcnow())
    if outcomes:
        log.info("retried inbox events: %s", outcomes, extra={"outcomes": outcomes})
    return outcomes


def expire_grants(engine: Engine) -> list[grants.Ended]:
    """Expire the live grants whose `expiresAt` has come; what expired (where a
    `grant.expired` event is written, once the outbox exists)."""
    expired = grants.expire_due(engine, clock.utcnow())
    if expired:
        log.info("expired %d grants (%d credits)", len(expired),
                 sum(e.amount for e in expired), extra={"expired_grants": len(expired)})
    return expired


def expire_holds(engine: Engine) -> int:
    """Expire the reservations past their TTL (their credits are freed); how many."""
    expired = reservations.expire_due(engine, now=clock.utcnow())
    if expired:
        log.info("expired %s reservations past their TTL", expired,
                 extra={"expired": expired})
    return expired


def frequent(engine: Engine) -> None:
    """The loop's frequent step (every few seconds): inbox retries, expired holds, due
    grant expiries. Each runs even when one before it failed; the first failure is raised
    after all have run."""
    failed: Exception | None = None
    for step in (retry_inbox, expire_holds, expire_grants):
        try:
            step(engine)
        except Exception as exc:
            failed = failed or exc
    if failed is not None:
        raise failed


def guarded_run(
    engine: Engine,
    *,
    trigger: str,
    batch_size: int = 5000,
    pol: policy.Policy | None = None,
    dry_run: bool = False,
    actor: policy.Actor = enums.Actor.TIMER,
) -> convergence.Summary | None:
    """Retry due inbox events, then converge as `trigger` says (`RUNS`), holding the
    convergence lock.

    None when another runner holds the lock (it is converging right now). A dry run
    retries no events (that would apply them) and writes nothing. `pol` None: the stored
    policy; a dry run may name another to see what it would do.
    """
    with locks.convergence_lock(engine) as held:
        if not held:
            log.info("another runner is converging; skipping this %s run", trigger)
            return None
        if not dry_run:
            retry_inbox(engine)
            expire_grants(engine)
        run = RUNS.get(trigger)
        if run is not None:
            return run(engine, trigger=trigger, actor=actor, pol=pol, batch_size=batch_size,
                       dry_run=dry_run)
        return convergence.converge(engine, trigger=trigger, actor=actor, pol=pol,
                                    batch_size=batch_size, dry_run=dry_run)


def guarded_audit(
    engine: Engine, client: marketplace.Client, interval: dt.timedelta, *,
    alerter: alerts.Alerter | None = None, should_stop: Callable[[], bool] = lambda: False,
    batch: int | None = None,
) -> audit.Report | None:
    """Audit one batch of the instances not checked for `interval` (least recently checked
    first), holding the audit lock; None when another runner holds it.

    A batch is about `AUDIT_BATCH_S` seconds of requests at the client's rate, so a stop
    is noticed soon and the audit walks every installed instance at the allowed rate.
    """
    with locks.audit_lock(engine) as held:
        if not held:
            return None
        size = batch or max(1, int(client.rate * AUDIT_BATCH_S))
        return audit.run(engine, client, limit=size,
                         checked_before=clock.utcnow() - interval, alerter=alerter,
                         should_stop=should_stop)


@dataclass
class Runner:
    engine: Engine
    interval: dt.timedelta
    batch_size: int = 5000
    retry_every: dt.timedelta = dt.timedelta(seconds=5)
    on_run: list[RunHook] = field(default_factory=list)
    on_error: list[Callable[[Exception], None]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    alerter: alerts.Alerter | None = None
    marketplace: marketplace.Client | None = None  # the periodic audit, when set
    audit_interval: dt.timedelta = dt.timedelta(hours=6)  # 0: no periodic audit
    on_audit: list[AuditHook] = field(default_factory=list)
    deliverer: outbox.Sender | None = None  # events to the app, when a URL is configured
    deliver_every: dt.timedelta = DELIVER_EVERY
    on_deliver: list[DeliveryHook] = field(default_factory=list)
    full_scan_interval: dt.timedelta = dt.timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.alerter is not None:
            hooks = alerts.RunnerAlerts(self.alerter, self.engine)
            self.on_run.append(hooks.on_run)
            self.on_error.append(hooks.on_error)

    def converge(self, trigger: str) -> convergence.Summary | None:
        """One guarded run; None when another runner holds the lock."""
        summary = guarded_run(self.engine, trigger=trigger, batch_size=self.batch_size)
        if summary is not None:
            for hook in self.on_run:
                hook(summary)
        return summary

    def retry_inbox(self) -> dict[str, int]:
        return retry_inbox(self.engine)

    def frequent(self) -> None:
        frequent(self.engine)

    def _guarded(self, action: Callable[[], object], what: str) -> None:
        try:
            action()
        except Exception as exc:
            log.error("%s failed: %s; retrying on the next tick", what, exc,
                      extra={"error": f"{type(exc).__name__}: {exc}"})
            for hook in self.on_error:
                hook(exc)

    def serve(self) -> None:
        """Run until `stopping` is set (call from a thread)."""
        self._guarded(lambda: self.converge(enums.Trigger.STARTUP), "start-up convergence")
        next_tick = clock.utcnow() + self.interval
        next_full = clock.utcnow() + self.full_scan_interval
        wait = min(self.retry_every, self.interval, self.full_scan_interval)
        while not self.stopping.wait(wait.total_seconds()):
            now = clock.utcnow()
            if now >= next_full:
                self._guarded(lambda: self.converge(enums.Trigger.FULL_SCAN), "full scan")
                next_full = clock.utcnow() + self.full_scan_interval
                next_tick = clock.utcnow() + self.interval
            elif now >= next_tick:
                self._guarded(lambda: self.converge(enums.Trigger.TICK), "tick")
                next_tick = clock.utcnow() + self.interval
            else:
                self._guarded(self.frequent, "inbox retry, hold and grant expiry")

    def audit_due(self) -> audit.Report | None:
        """One batch of the periodic audit: instances not checked for `audit_interval`."""
        assert self.marketplace is not None
        report = guarded_audit(self.engine, self.marketplace, self.audit_interval,
                               alerter=self.alerter, should_stop=self.stopping.is_set)
        if report is not None and report.checked + report.errors:
            for hook in self.on_audit:
                hook(report)
        return report

    def serve_audit(self) -> None:
        """The periodic audit until `stopping` is set: batches while some are due."""
        while not self.stopping.is_set():
            report: audit.Report | None = None
            try:
                report = self.audit_due()
            except Exception as exc:
                log.error("marketplace audit failed: %s; retrying in %ss", exc, AUDIT_IDLE_S,
                          extra={"error": f"{type(exc).__name__}: {exc}"})
            # on at once while instances get checked; a batch the marketplace could not
            # answer at all waits (its instances are asked again ten minutes later)
            busy = report is not None and report.checked > 0
            self.stopping.wait(0 if busy else AUDIT_IDLE_S)

    def deliver(self) -> dict[str, int] | None:
        """Deliver the outbox's due events (None: another runner is delivering)."""
        assert self.deliverer is not None
        outcomes = outbox.deliver_due(self.engine, self.deliverer)
        if outcomes:
            for hook in self.on_deliver:
                hook(outcomes)
        return outcomes

    def serve_deliveries(self) -> None:
        """Deliver events to the app every `deliver_every` until `stopping` is set: a thread
        of its own, so a slow or dead app never holds up convergence."""
        while not self.stopping.wait(self.deliver_every.total_seconds()):
            self._guarded(self.deliver, "delivering events to the app")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="creditsync-loop", daemon=True)
        thread.start()
        if self.deliverer is not None:
            threading.Thread(target=self.serve_deliveries, name="creditsync-deliver",
                             daemon=True).start()
        if self.marketplace is not None and self.audit_interval > dt.timedelta(0):
            threading.Thread(target=self.serve_audit, name="creditsync-audit",
                             daemon=True).start()
        return thread
