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
    # grants (`grants.py`): each row names its grant in `grant_id`, except a draw over
    # several grants (a consume, a negative adjustment), whose parts are `ledger_grant_draws`
    GRANT = "grant"  # a grant was made: the bonus grows by its amount
    GRANT_EXPIRED = "grant_expired"  # a grant's remainder left at its `expiresAt`
    GRANT_VOIDED = "grant_voided"  # an admin voided a grant: its remainder left
    ROLLOVER = "rollover"  # at the monthly reset, unused plan credits became a grant


class GrantStatus(StrEnum):
    """Where a grant is: `live` (spendable), or ended: `spent` (nothing left), `expired`
    (its remainder left at `expiresAt`), `voided` (an admin took its remainder back)."""

    LIVE = "live"
    SPENT = "spent"
    EXPIRED = "expired"
    VOIDED = "voided"


class GrantSource(StrEnum):
    """Who made a grant: an admin, the app (a service key), a rollover at the monthly
    reset, or the migration that turned the old bonus credits into grants."""

    ADMIN = "admin"
    APP = "app"
    ROLLOVER = "rollover"
    MIGRATION = "migration"


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


class ReservationStatus(StrEnum):
    """Where a reservation (credits held for a job) is: `held` until it is committed
    (charged as usage), released, or expired (past its TTL, released by the loop)."""

    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


class Scope(StrEnum):
    """What a service key may do (`Authorization: Bearer csk_…`)."""

    CREDITS_READ = "credits:read"
    CREDITS_CONSUME = "credits:consume"
    CREDITS_GRANT = "credits:grant"


# what an instance token (the dashboard's, for its own instance only) may do
INSTANCE_TOKEN_SCOPES = frozenset({Scope.CREDITS_READ, Scope.CREDITS_CONSUME})


class AppEvent(StrEnum):
    """The events creditsync sends to the app (Standard Webhooks `type`s)."""

    CREDITS_LOW = "credits.low"  # remaining fell to a threshold of the period's allocation
    CREDITS_DEPLETED = "credits.depleted"  # nothing left
    CREDITS_RESET = "credits.reset"  # the monthly reset
    PLAN_CHANGED = "plan.changed"  # an accepted purchase or plan change, or an expiry
    CREDITS_REPAIRED = "credits.repaired"  # the reconciler fixed a drift
    GRANT_EXPIRED = "grant.expired"  # what was left on a grant expired


class DeliveryStatus(StrEnum):
    """Where an outbox event stands."""

    PENDING = "pending"  # to be sent (again, after its backoff)
    DELIVERED = "delivered"  # the app answered 2xx
    DEAD = "dead"  # gave up after `outbox.MAX_ATTEMPTS`; an admin may replay it
