"""The convergence loop of `creditsync run`, and the guarded run it shares with the operator.

Once at start-up, then every `interval`: retry due inbox events and converge every
instance with the stored policy (`policy_store`), under the convergence lock so two runners
(operator or standalone) never converge at once. Inbox retries run more often (every
`retry_every`) so a failed webhook is not left waiting. An `alerter` gets the drift,
webhook and degraded alerts of `creditsync.alerts`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from creditsync import alerts, clock, convergence, enums, inbox, locks, policy

log = logging.getLogger("creditsync.runner")

RunHook = Callable[[convergence.Summary], None]


def retry_inbox(engine: Engine) -> dict[str, int]:
    """Retry the inbox events that are due; their outcomes by status."""
    outcomes = inbox.retry_due(engine, now=clock.utcnow())
    if outcomes:
        log.info("retried inbox events: %s", outcomes, extra={"outcomes": outcomes})
    return outcomes


def guarded_run(
    engine: Engine,
    *,
    trigger: str,
    batch_size: int = 5000,
    pol: policy.Policy | None = None,
    dry_run: bool = False,
    actor: policy.Actor = enums.Actor.TIMER,
) -> convergence.Summary | None:
    """Retry due inbox events, then converge everything, holding the convergence lock.

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
        return convergence.converge(engine, trigger=trigger, actor=actor, pol=pol,
                                    batch_size=batch_size, dry_run=dry_run)


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
        self._guarded(lambda: self.converge("startup"), "start-up convergence")
        next_run = clock.utcnow() + self.interval
        while not self.stopping.wait(min(self.retry_every, self.interval).total_seconds()):
            if clock.utcnow() >= next_run:
                self._guarded(lambda: self.converge("timer"), "timer convergence")
                next_run = clock.utcnow() + self.interval
            else:
                self._guarded(self.retry_inbox, "inbox retry")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="creditsync-loop", daemon=True)
        thread.start()
        return thread
