"""What the handlers share, kept in kopf's `memo`.

The startup handler puts one `Shared` into the root memo; kopf copies the root memo
shallowly into every object's memo, so all handlers see the same engine, alerter, catalog
change counter, instance counts, Kubernetes client, marketplace client (None: the
marketplace source is off) and the client of events to the app (None: no URL). Per-object
state (a loop's schedule) lives in that object's own memo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import kopf
from sqlalchemy.engine import Engine

from creditsync import alerts, config, delivery, factory, marketplace, reports
from creditsync_operator import kube, schedule

log = logging.getLogger("creditsync.operator")

SHARED = "creditsync"
LOOP = "creditsync_loop"
LOOP_ALIVE = 10.0  # a loop that polled within this many seconds is alive
COUNTS_TTL = 30.0  # instance counts are refreshed at least this often while plans exist

T = TypeVar("T")


@dataclass
class Shared:
    """The operator-wide state: one per process."""

    factory: factory.Factory
    executor: concurrent.futures.Executor  # kopf's thread pool, for blocking database work
    alerter: alerts.Alerter | None = None
    connect: Callable[[], kube.StatusApi] = kube.connect  # tests pass a fake
    marketplace: marketplace.Client | None = None  # the periodic audit's; None: source off
    deliverer: delivery.Client | None = None  # events to the app; None: no URL configured
    plan_generation: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    counts_version: int = 0
    counts_at: float | None = None
    _kube: kube.StatusApi | None = None
    _heartbeats: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self) -> Engine:
        return self.factory.engine

    @property
    def settings(self) -> config.Settings:
        return self.factory.settings

    def status_api(self) -> kube.StatusApi:
        """The client the daemons write status with, made on first use (blocking)."""
        with self._lock:
            if self._kube is None:
                self._kube = self.connect()
            return self._kube

    def plan_changed(self) -> None:
        """The catalog changed: every loop converges promptly."""
        with self._lock:
            self.plan_generation += 1

    def beat(self, uid: str) -> None:
        with self._lock:
            self._heartbeats[uid] = time.monotonic()

    def live_loops(self) -> int:
        """How many CreditSync loops polled lately (0: nobody converges on its own)."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for at in self._heartbeats.values() if now - at < LOOP_ALIVE)

    def counts_stale(self) -> bool:
        return self.counts_at is None or time.monotonic() - self.counts_at > COUNTS_TTL

    def refresh_counts(self) -> None:
        """Count instances per plan (blocking; one refresh at a time, others skip)."""
        if not self._refreshing.acquire(blocking=False):
            return
        try:
            self.counts_at = time.monotonic()  # a failed attempt also waits for the TTL
            found = reports.instances_per_plan(self.engine)
            with self._lock:
                if found != self.counts:
                    self.counts = found
                    self.counts_version += 1
        finally:
            self._refreshing.release()

    def alert(self, alert: alerts.Alert) -> None:
        if self.alerter is not None:
            self.alerter.send(alert)


def shared(memo: kopf.Memo) -> Shared:
    found = memo.get(SHARED)
    if not isinstance(found, Shared):
        raise kopf.TemporaryError("the operator is still starting up", delay=1)
    return found


def loop_state(memo: kopf.Memo) -> schedule.LoopState:
    found = memo.get(LOOP)
    if not isinstance(found, schedule.LoopState):
        found = memo[LOOP] = schedule.LoopState()
    return found


async def blocking(executor: concurrent.futures.Executor, fn: Callable[..., T],
                   *args: object) -> T:
    """Run blocking database work on `executor` (kopf's pool: its worker limit applies)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args))
