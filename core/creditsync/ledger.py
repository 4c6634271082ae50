"""The ledger's rows: one builder and one column list for every writer.

Every change to an instance's numbers is one row with the numbers before and after, who
made it (`actor`) and why (`kind`, `reason`, `correlation_id`); replaying an instance's rows
gives its current numbers. Writers that speak SQL directly iterate `COLUMNS`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from creditsync import policy

COLUMNS = (
    "instance_id", "at", "kind", "actor", "correlation_id", "plan_before", "plan_after",
    "credits_total_before", "credits_total_after", "credits_used_before", "credits_used_after",
    "bonus_before", "bonus_after", "reason",
)

# A new instance's row has no numbers before it.
NOTHING = policy.Numbers("", 0, 0, 0, dt.datetime.min.replace(tzinfo=dt.UTC),
                         dt.datetime.min.replace(tzinfo=dt.UTC), 0)


def entry(
    instance_id: str, kind: str, before: policy.Numbers | None, after: policy.Numbers, *,
    at: dt.datetime, actor: str, correlation_id: str | None, reason: str | None,
) -> dict[str, Any]:
    """The row recording `before` → `after` (`before` None: the instance is new)."""
    old = before or NOTHING
    return {
        "instance_id": instance_id, "at": at, "kind": kind, "actor": actor,
        "correlation_id": correlation_id,
        "plan_before": old.plan_id if before is not None else None, "plan_after": after.plan_id,
        "credits_total_before": old.credits_total, "credits_total_after": after.credits_total,
        "credits_used_before": old.credits_used, "credits_used_after": after.credits_used,
        "bonus_before": old.bonus_credits, "bonus_after": after.bonus_credits,
        "reason": reason,
    }


def step_entry(
    instance_id: str, step: policy.Step, *, at: dt.datetime, actor: str,
    correlation_id: str | None,
) -> dict[str, Any]:
    """The row recording one convergence step."""
    return entry(instance_id, step.kind, step.before, step.after, at=at, actor=actor,
                 correlation_id=correlation_id, reason=step.reason)


def provision_entry(
    instance_id: str, numbers: policy.Numbers, *, at: dt.datetime, actor: str,
    correlation_id: str | None,
) -> dict[str, Any]:
    """The row of a new instance on the default plan."""
    return entry(instance_id, "provision", None, numbers, at=at, actor=actor,
                 correlation_id=correlation_id, reason="new instance starts on the default plan")


def row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """`row`'s values in `COLUMNS` order, for an `INSERT … VALUES` a writer builds itself."""
    return tuple(row[column] for column in COLUMNS)
