"""The ledger's rows: one builder and one column list for every writer.

Every change to an instance's numbers is one row with the numbers before and after, who
made it (`actor`) and why (`kind`, `reason`, `correlation_id`); replaying an instance's rows
gives its current numbers. Writers that speak SQL directly iterate `COLUMNS`.

Grants replay too: a row that changed one grant names it (`grant_id`; the grant's remaining
moved by `bonus_after - bonus_before`); a row that drew from several (a consume, a negative
adjustment) has its parts in `ledger_grant_draws`. The kinds `grant`, `grant_expired`,
`grant_voided` and `rollover` are the grants' own (`enums.LedgerKind`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from creditsync import policy

# column -> PostgreSQL type, for writers that stage rows in SQL of their own
TYPES = {
    "instance_id": "text", "at": "timestamptz", "kind": "text", "actor": "text",
    "correlation_id": "text", "plan_before": "text", "plan_after": "text",
    "credits_total_before": "bigint", "credits_total_after": "bigint",
    "credits_used_before": "bigint", "credits_used_after": "bigint",
    "bonus_before": "bigint", "bonus_after": "bigint", "reason": "text",
    "grant_id": "text",
}
COLUMNS = tuple(TYPES)
# the same for every row of one write (a batch or an event): set once by batch writers
FIXED = ("at", "actor", "correlation_id")
# the rest, in `COLUMNS` order: what `step_values` gives for each row
VARYING = tuple(column for column in COLUMNS if column not in FIXED)

# A new instance's row has no numbers before it.
NOTHING = policy.Numbers("", 0, 0, 0, dt.datetime.min.replace(tzinfo=dt.UTC),
                         dt.datetime.min.replace(tzinfo=dt.UTC), 0)


def values(
    instance_id: str, kind: str, before: policy.Numbers | None, after: policy.Numbers,
    reason: str | None, grant_id: str | None = None,
) -> tuple[Any, ...]:
    """A row's `VARYING` columns, in order (a tuple: batch writers build millions)."""
    old = before or NOTHING
    return (instance_id, kind, old.plan_id if before is not None else None, after.plan_id,
            old.credits_total, after.credits_total, old.credits_used, after.credits_used,
            old.bonus_credits, after.bonus_credits, reason, grant_id)


def step_values(
    instance_id: str, step: policy.Step, grant_id: str | None = None
) -> tuple[Any, ...]:
    """One convergence step's `VARYING` columns (`grant_id`: a rollover step's grant)."""
    return values(instance_id, step.kind, step.before, step.after, step.reason, grant_id)


def entry(
    instance_id: str, kind: str, before: policy.Numbers | None, after: policy.Numbers, *,
    at: dt.datetime, actor: str, correlation_id: str | None, reason: str | None,
    grant_id: str | None = None,
) -> dict[str, Any]:
    """The row recording `before` → `after` (`before` None: the instance is new)."""
    return {"at": at, "actor": actor, "correlation_id": correlation_id,
            **dict(zip(VARYING, values(instance_id, kind, before, after, reason, grant_id),
                       strict=True))}


def step_entry(
    instance_id: str, step: policy.Step, *, at: dt.datetime, actor: str,
    correlation_id: str | None, grant_id: str | None = None,
) -> dict[str, Any]:
    """The row recording one convergence step."""
    return entry(instance_id, step.kind, step.before, step.after, at=at, actor=actor,
                 correlation_id=correlation_id, reason=step.reason, grant_id=grant_id)


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
