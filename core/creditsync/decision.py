"""What one billing event does to its instance: one pure `decide()`, for every I/O path.

The inbox's blocking path (`inbox.process`, SQLAlchemy) and its async path on PostgreSQL
(`storage.inbox_pg`, psycopg) read the same things — the event, the instance's
subscription and numbers, the catalog, the policy — call `decide()`, and write what it
returns. Only the reading and the writing differ; a property test keeps the two paths equal.

The order of decisions: an event type nobody acts on is `ignored`; a plan event (or a
marketplace snapshot of a paid package) whose product the catalog cannot resolve is
`quarantined` (retried once the catalog can, downgrading nobody meanwhile); a
purchase or install creates a missing instance on the default plan; an event older than the
newest accepted one is `stale`; otherwise the subscription takes its next state and the
instance converges to it (`policy.transition`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from creditsync import enums, plans, policy, subscriptions

Status = enums.EventStatus


@dataclass(frozen=True)
class Event:
    """A stored event reduced to what a decision reads (the product not yet resolved)."""

    instance_id: str
    event_type: str
    operation_time: dt.datetime
    product_id: str | None
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class Decision:
    """The event's status, and the writes that carry it out.

    `created`: the instance did not exist and is inserted with these numbers (then `steps`
    apply to them). `subscription`: the subscription's next state (None: unchanged).
    `steps`: how the instance's numbers change, each a ledger row.
    """

    status: str
    created: policy.Numbers | None = None
    subscription: subscriptions.State | None = None
    steps: tuple[policy.Step, ...] = ()

    @property
    def final(self) -> policy.Numbers | None:
        """The instance's numbers after the writes (None: no instance, or untouched)."""
        return self.steps[-1].after if self.steps else self.created


def first_numbers(default: plans.Plan, now: dt.datetime) -> policy.Numbers:
    """A new instance: the default plan, nothing used, a period starting now."""
    start, end = policy.first_period(now)
    return policy.Numbers(default.id, default.monthly_credits, 0, 0, start, end, 0)


def desired(
    sub: subscriptions.State | None, cat: plans.Catalog, now: dt.datetime, pol: policy.Policy
) -> policy.Desired:
    """What `sub` and the catalog say an instance must have now.

    The same definition as the drift query's SQL (`convergence`); a property test keeps the
    two equal.
    """
    plan_id, expired = policy.desired_plan_id(
        sub.status if sub else None, sub.plan_id if sub else None,
        sub.expires_at if sub else None, cat.default.id, now, pol.expiry_grace_period)
    known = cat.get(plan_id)
    return policy.Desired(plan_id, known.monthly_credits if known else None,
                          sub.rev if sub else 0, sub.source_time if sub else None, expired,
                          known.rollover if known else None)


def decide(
    event: Event,
    subscription: subscriptions.State | None,
    instance: policy.Numbers | None,
    cat: plans.Catalog,
    now: dt.datetime,
    pol: policy.Policy,
) -> Decision:
    """The status of `event` and what it changes, given everything as read under the lock."""
    if event.event_type not in subscriptions.EVENT_TYPES:
        return Decision(Status.IGNORED)
    plan_id: str | None = None
    if event.event_type in subscriptions.PLAN_EVENTS or (
            event.event_type == subscriptions.SNAPSHOT and event.product_id is not None):
        plan = cat.resolve(event.product_id or "")
        if plan is None:
            return Decision(Status.QUARANTINED)
        plan_id = plan.id
    created = None
    if instance is None and event.event_type in subscriptions.PROVISIONING:
        # only an installed app can be bought: a purchase provisions its instance
        created = instance = first_numbers(cat.default, now)
    if subscription is not None and event.operation_time < subscription.source_time:
        return Decision(Status.STALE, created)
    billing = subscriptions.BillingEvent(event.instance_id, event.event_type,
                                         event.operation_time, plan_id, event.expires_at)
    new = subscriptions.next_state(subscription, billing, cat.default.id)
    sub = new or subscription
    steps = () if instance is None else tuple(
        policy.transition(instance, desired(sub, cat, now, pol), now, pol))
    return Decision(Status.APPLIED, created, new, steps)
