"""Which events to the app a change causes, written to the outbox in the change's transaction.

- `after_spend()`: a charge (a consume; a reservation's commit) — `credits.low` for each
  threshold the balance is now at or below that was not sent this period (the sent set is
  the instance's `low_credits_sent`, valid for the period that started at
  `low_credits_period`: a reset re-arms every threshold; a threshold the balance was back
  above before this spend, after a top-up or an upgrade, is armed again), and
  `credits.depleted` when the charge took the last credit.
- `after_changes()`: convergence's and the webhooks' steps — `credits.reset`,
  `plan.changed` (an accepted purchase or plan change, or an expiry), `credits.repaired`
  (a drift the reconciler fixed) — set-based, one insert per batch.
- `grant_expired()` / `grant_expired_event()`: for the grants' expiry (one, or a batch
  through `outbox.emit_many`).

Every event carries the numbers before and after (`before`, `after`) and the id of the
ledger row that recorded the change (`ledgerId`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from creditsync import enums, outbox, policy, thresholds
from creditsync.storage import models

_i = models.INSTANCES
Kind = enums.LedgerKind
Event = enums.AppEvent

# ledger kind of a convergence or webhook step -> the event it sends
STEP_EVENTS: Mapping[str, enums.AppEvent] = {
    Kind.PERIOD_RESET: Event.CREDITS_RESET,
    Kind.PLAN_CHANGE: Event.PLAN_CHANGED,
    Kind.EXPIRY: Event.PLAN_CHANGED,
    Kind.DRIFT_REPAIR: Event.CREDITS_REPAIRED,
}


def numbers(n: policy.Numbers) -> dict[str, Any]:
    """An instance's numbers as payloads carry them (the credits JSON's names)."""
    return {"plan": n.plan_id, "creditsTotal": n.credits_total, "creditsUsed": n.credits_used,
            "bonusCredits": n.bonus_credits,
            "creditsRemaining": policy.remaining(n.credits_total, n.credits_used,
                                                 n.bonus_credits),
            "periodStart": outbox.timestamp(n.period_start),
            "periodEnd": outbox.timestamp(n.period_end)}


def data(before: policy.Numbers, after: policy.Numbers, ledger_id: int | None,
         **extra: Any) -> dict[str, Any]:
    return {"ledgerId": ledger_id, "before": numbers(before), "after": numbers(after), **extra}


def after_spend(
    conn: Connection, instance_id: str, before: policy.Numbers, after: policy.Numbers, *,
    ledger_id: int, now: dt.datetime, pol: policy.Policy,
    armed: tuple[str | None, dt.datetime | None] | None = None,
) -> list[enums.AppEvent]:
    """The events of one charge, written in the caller's (locked) transaction; their types.

    `armed`: the instance's `(low_credits_sent, low_credits_period)` as the caller's locked
    read found them (None: read them here)."""
    left_before = policy.remaining(before.credits_total, before.credits_used,
                                   before.bonus_credits)
    left_after = policy.remaining(after.credits_total, after.credits_used, after.bonus_credits)
    if armed is None:
        state = conn.execute(sa.select(_i.c.low_credits_sent, _i.c.low_credits_period)
                             .where(_i.c.instance_id == instance_id)).one()
        armed = (state.low_credits_sent, state.low_credits_period)
    sent_code, sent_period = armed
    sent = (thresholds.decode_sent(sent_code)
            if sent_period == after.period_start else frozenset())
    fire, now_sent = thresholds.after_spend(pol.low_credit_thresholds, sent, left_before,
                                            left_after, after.credits_total)
    if now_sent != sent:  # a stale period's set reads as empty: it needs no write
        conn.execute(_i.update().where(_i.c.instance_id == instance_id).values(
            low_credits_sent=thresholds.encode_sent(now_sent),
            low_credits_period=after.period_start))
    found = [outbox.Event(instance_id, Event.CREDITS_LOW, data(
        before, after, ledger_id, threshold=thresholds.percent(t),
        thresholdCredits=t * after.credits_total // 10000)) for t in fire]
    if left_after == 0 < left_before:
        found.append(outbox.Event(instance_id, Event.CREDITS_DEPLETED,
                                  data(before, after, ledger_id)))
    outbox.emit_many(conn, found, now=now)
    return [e.type for e in found]


def step_events(
    changes: Sequence[policy.Change], ledger_ids: Mapping[tuple[str, str], int],
) -> list[outbox.Event]:
    """The events of convergence's (or a webhook's) applied changes; `ledger_ids` maps
    (instance id, ledger kind) to the row that recorded that step."""
    found: list[outbox.Event] = []
    for change in changes:
        for step in change.steps:
            kind = STEP_EVENTS.get(step.kind)
            if kind is None:
                continue
            extra: dict[str, Any] = {"kind": str(step.kind), "reason": step.reason}
            if kind == Event.PLAN_CHANGED:
                extra |= {"previousPlan": step.before.plan_id, "plan": step.after.plan_id}
            found.append(outbox.Event(change.instance_id, kind, data(
                step.before, step.after, ledger_ids.get((change.instance_id, step.kind)),
                **extra)))
    return found


def after_changes(
    conn: Connection, changes: Sequence[policy.Change],
    ledger_ids: Mapping[tuple[str, str], int], *, now: dt.datetime,
) -> None:
    """Write the events of a batch's applied changes in the batch's transaction."""
    outbox.emit_many(conn, step_events(changes, ledger_ids), now=now)


def grant_expired_event(
    instance_id: str, before: policy.Numbers, after: policy.Numbers, *, ledger_id: int,
    grant: Mapping[str, Any],
) -> outbox.Event:
    """`grant.expired`: what was left on a grant left the balance (`grant` is the grant as
    the API answers it: `grantId`, `amount`, `expired` …). For a set-based expiry, pass a
    batch of these to `outbox.emit_many` in the expiry's transaction."""
    return outbox.Event(instance_id, Event.GRANT_EXPIRED,
                        data(before, after, ledger_id, grant=dict(grant)))


def grant_expired(
    conn: Connection, instance_id: str, before: policy.Numbers, after: policy.Numbers, *,
    ledger_id: int, now: dt.datetime, grant: Mapping[str, Any],
) -> str:
    """Write one `grant.expired` in the caller's transaction; its `webhook-id`."""
    event = grant_expired_event(instance_id, before, after, ledger_id=ledger_id, grant=grant)
    return outbox.emit(conn, instance_id, event.type, event.data, now=now)
