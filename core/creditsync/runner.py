"""The convergence loop shared by `creditsync run` and the operator's fallback.

Once at start-up, then every `interval`: retry due inbox events and converge every
instance, under the convergence lock so two runners never converge at once. Inbox
retries run more often (every `retry_every`) so a failed webhook is not left waiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from creditsync import convergence, inbox, locks, policy

log = logging.getLogger("creditsync.runner")

RunHook = Callable[[convergence.Summary], None]


@dataclass
class Runner:
    engine: Engine
    pol: policy.Policy
    interval: dt.timedelta
    batch_size: int = 5000
    retry_every: dt.timedelta = dt.timedelta(seconds=5)
    on_run: list[RunHook] = field(default_factory=list)
    on_error: list[Callable[[Exception], None]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def converge(self, trigger: str) -> convergence.Summary | None:
        """One guarded run; None when another runner holds the lock."""
        with locks.convergence_lock(self.engine) as held:
            if not held:
                log.info("another runner is converging; skipping this %s run", trigger)
                return None
            self.retry_inbox()
            summary = convergence.converge(self.engine, trigger=trigger, actor="timer",
                                           pol=self.pol, batch_size=self.batch_size)
        for hook in self.on_run:
            hook(summary)
        return summary

    def retry_inbox(self) -> dict[str, int]:
        outcomes = inbox.retry_due(self.engine, now=convergence.utcnow(), pol=self.pol)
        if outcomes:
            log.info("retried inbox events: %s", outcomes, extra={"outcomes": outcomes})
        return outcomes

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
        next_run = convergence.utcnow() + self.interval
        while not self.stopping.wait(min(self.retry_every, self.interval).total_seconds()):
            if convergence.utcnow() >= next_run:
                self._guarded(lambda: self.converge("timer"), "timer convergence")
                next_run = convergence.utcnow() + self.interval
            else:
                self._guarded(self.retry_inbox, "inbox retry")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="creditsync-loop", daemon=True)
        thread.start()
        return thread
