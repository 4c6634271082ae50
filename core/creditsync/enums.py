"""The names creditsync stores and answers with: one `StrEnum` each, used everywhere.

The API's schemas reuse them, `GET /api/vocabulary` lists them for the pages, and the
database holds their values. A `StrEnum` member equals its value, so rows read back as
plain strings compare equal to the members.
"""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    """What became of an inbox event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"
    FAILED = "failed"
    PENDING = "pending"


# an admin may apply these again: the others were applied, or deliberately changed nothing
REPLAYABLE = frozenset({EventStatus.FAILED, EventStatus.QUARANTINED, EventStatus.PENDING,
                        EventStatus.IGNORED})
# the retry loop applies these
APPLICABLE = frozenset({EventStatus.PENDING, EventStatus.QUARANTINED})
# waiting for somebody: the backlog an operator is told about
BACKLOG = (EventStatus.PENDING, EventStatus.QUARANTINED, EventStatus.FAILED)


class LedgerKind(StrEnum):
    """Why an instance's numbers changed (one ledger row each)."""

    PROVISION = "provision"
    PLAN_CHANGE = "plan_change"
    DRIFT_REPAIR = "drift_repair"
    PERIOD_RESET = "period_reset"
    USAGE = "usage"
    ADJUSTMENT = "adjustment"
    EXPIRY = "expiry"


class Actor(StrEnum):
    """Who changed an instance's numbers; `app`: the app's own usage (a consume, and the
    monthly reset a consume found due)."""

    WEBHOOK = "webhook"
    TIMER = "timer"
    MANUAL = "manual"
    PROVISION = "provision"
    ADMIN = "admin"
    CLI = "cli"
    APP = "app"


class Trigger(StrEnum):
    """What started a convergence (a sync run's `trigger`)."""

    STARTUP = "startup"  # a full scan at start-up
    TIMER = "timer"  # the loop's full converge before incremental ticks (older runs)
    TICK = "tick"  # the loop's regular incremental tick
    FULL_SCAN = "full_scan"  # the loop's full scan on its own interval (audits the ticks)
    WEBHOOK = "webhook"
    MANUAL = "manual"
    PLAN_CHANGE = "plan_change"
    CLI = "cli"
    AUDIT = "audit"
    PROVISION = "provision"
    USAGE = "usage"  # a consume found the monthly reset due


class UsagePolicy(StrEnum):
    """What a purchase or plan change does to the period's usage."""

    RESET = "Reset"
    PRESERVE = "Preserve"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"  # renewal off, paid until `expires_at`
    REMOVED = "removed"  # the app was uninstalled


class AuditAction(StrEnum):
    """What the audit did about an instance the marketplace disagreed on."""

    HEALED = "healed"  # the marketplace's view was applied
    WOULD_HEAL = "would_heal"  # a dry run: it would be applied
    QUARANTINED = "quarantined"  # a package no plan names: nobody downgraded, alerted
    NONE = "none"  # nothing to do after all (e.g. a newer webhook already decided)
