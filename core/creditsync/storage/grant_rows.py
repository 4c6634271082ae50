"""The `grants` table's rows as the batch writers build them (convergence's rollover at
the monthly reset, on either database); the service around grants is `creditsync.grants`."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from creditsync import enums, policy
from creditsync.storage import models

DEFAULT_PRIORITY = 50
# the table's columns, in the order the writers insert them
COLUMNS = tuple(column.name for column in models.GRANTS.columns)
# column -> PostgreSQL type, for writers that stage rows in SQL of their own
TYPES = {"id": "text", "instance_id": "text", "amount": "bigint", "remaining": "bigint",
         "priority": "int", "expires_at": "timestamptz", "reason": "text", "source": "text",
         "idempotency_key": "text", "status": "text", "created_at": "timestamptz",
         "ended_at": "timestamptz"}
assert set(TYPES) == set(COLUMNS), "grant_rows.TYPES must name every grants column"


def new_id() -> str:
    """An unguessable grant id."""
    return f"grt_{secrets.token_urlsafe(16)}"


def rollover_key(period_start: dt.datetime) -> str:
    """A rollover grant's idempotency key: one per instance and period, so no reset can
    roll a period over twice."""
    return f"rollover:{period_start.astimezone(dt.UTC).isoformat()}"


def rollover_row(instance_id: str, step: policy.Step, now: dt.datetime) -> dict[str, Any]:
    """The row a `rollover` step makes (a new id; its ledger row names it)."""
    amount = step.after.bonus_credits - step.before.bonus_credits
    return {"id": new_id(), "instance_id": instance_id, "amount": amount, "remaining": amount,
            "priority": DEFAULT_PRIORITY, "expires_at": step.expires_at, "reason": step.reason,
            "source": enums.GrantSource.ROLLOVER,
            "idempotency_key": rollover_key(step.after.period_start),
            "status": enums.GrantStatus.LIVE, "created_at": now, "ended_at": None}
