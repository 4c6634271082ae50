"""Builders for the operator's unit tests: run summaries without a database, and stand-ins
for the Kubernetes API and kopf's `stopped` flag."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from creditsync import convergence, policy
from creditsync_operator import kube
from tests.support.times import T0

EARLIER = "2026-01-01T00:00:00Z"


def numbers(plan: str, credits: int) -> policy.Numbers:
    return policy.Numbers(plan_id=plan, credits_total=credits, credits_used=0, bonus_credits=0,
                          period_start=T0, period_end=T0 + dt.timedelta(days=30), applied_rev=0)


def change(instance_id: str, before: tuple[str, int], after: tuple[str, int],
           kind: policy.Kind = "drift_repair") -> policy.Change:
    step = policy.Step(kind, numbers(*before), numbers(*after), "test")
    return policy.Change(instance_id, (step,))


def summary(*, scanned: int = 10, drifted: int = 0, repaired: int = 0, failed: int = 0,
            plan_missing: int = 0, missing: tuple[str, ...] = (), dry_run: bool = False,
            trigger: str = "timer", changes: int | None = None, scope: str = "all",
            missed: int | None = None) -> convergence.Summary:
    made = [change(f"inst-{n:03d}", ("free", 100), ("pro", 5000))
            for n in range(repaired if changes is None else changes)]
    return convergence.Summary(
        run_id="run-1", trigger=trigger, dry_run=dry_run, started_at=T0, scanned=scanned,
        drifted=drifted, repaired=repaired, failed=failed, plan_missing=plan_missing,
        duration_s=0.25, changes=made[:convergence.KEEP_CHANGES], missing_plans=set(missing),
        scope=scope, missed=missed)


class FakeStatusApi:
    """Records status writes; `conflicts` of them are refused, as for a changed object."""

    def __init__(self, raw: dict[str, Any] | None = None, conflicts: int = 0) -> None:
        self.raw = raw
        self.conflicts = conflicts
        self.writes: list[tuple[str, str, str, dict[str, Any], str | None]] = []

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                     *, resource_version: str | None = None) -> None:
        self.writes.append((plural, namespace, name, status, resource_version))
        if self.conflicts:
            self.conflicts -= 1
            assert self.raw is not None  # meanwhile, someone else wrote (kopf's watch shows it)
            self.raw["metadata"]["resourceVersion"] = "8"
            self.raw["status"] = {"conditions": [
                {"type": "Ready", "status": "True", "reason": "Synced",
                 "lastTransitionTime": EARLIER}]}
            raise kube.Conflict("changed meanwhile")


class Stopped:
    """What kopf passes an async daemon as `stopped`."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
