"""Builders for the operator's unit tests: run summaries without a database."""

from __future__ import annotations

import datetime as dt

from creditsync import convergence, policy

T0 = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


def numbers(plan: str, credits: int) -> policy.Numbers:
    return policy.Numbers(plan_id=plan, credits_total=credits, credits_used=0, bonus_credits=0,
                          period_start=T0, period_end=T0 + dt.timedelta(days=30), applied_rev=0)


def change(instance_id: str, before: tuple[str, int], after: tuple[str, int],
           kind: policy.Kind = "drift_repair") -> policy.Change:
    step = policy.Step(kind, numbers(*before), numbers(*after), "test")
    return policy.Change(instance_id, (step,))


def summary(*, scanned: int = 10, drifted: int = 0, repaired: int = 0, failed: int = 0,
            plan_missing: int = 0, missing: tuple[str, ...] = (), dry_run: bool = False,
            trigger: str = "timer", changes: int | None = None) -> convergence.Summary:
    made = [change(f"inst-{n:03d}", ("free", 100), ("pro", 5000))
            for n in range(repaired if changes is None else changes)]
    return convergence.Summary(
        run_id="run-1", trigger=trigger, dry_run=dry_run, started_at=T0, scanned=scanned,
        drifted=drifted, repaired=repaired, failed=failed, plan_missing=plan_missing,
        duration_s=0.25, changes=made[:convergence.KEEP_CHANGES], missing_plans=set(missing))
