"""The transition policy, as pure functions: desired plan, and what convergence changes.

Nothing here touches the database. `convergence` reads rows, asks `transition` what an
instance must become, and writes the answer; the tests' reference model uses the same
definitions of desired state.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from creditsync import enums, thresholds

if TYPE_CHECKING:
    from creditsync import config, plans

UsagePolicy = enums.UsagePolicy
Kind = enums.LedgerKind
Actor = enums.Actor


@dataclass(frozen=True)
class Policy:
    """How convergence treats usage and expiry (the `CreditSync` spec's knobs)."""

    usage_on_plan_change: UsagePolicy = UsagePolicy.RESET
    expiry_grace_period: dt.timedelta = dt.timedelta(0)
    # `credits.low` thresholds (basis points of the period's allocation, highest first)
    low_credit_thresholds: thresholds.Thresholds = thresholds.DEFAULT


def from_settings(settings: config.Settings) -> Policy:
    """The policy standalone `creditsync run` stores from its environment."""
    return Policy(UsagePolicy(settings.usage_on_plan_change), settings.expiry_grace_period,
                  settings.low_credit_thresholds)


def from_row(row: Sequence[object] | None) -> Policy:
    """The policy from a stored `(usage_on_plan_change, expiry_grace_seconds
    [, low_credit_thresholds])` (None: the built-in defaults)."""
    if row is None:
        return Policy()
    usage = UsagePolicy.PRESERVE if row[0] == UsagePolicy.PRESERVE else UsagePolicy.RESET
    seconds = row[1]
    assert isinstance(seconds, int | float | str)
    stored = row[2] if len(row) > 2 else None
    low = (thresholds.parse(stored, where="the stored policy's low_credit_thresholds")
           if isinstance(stored, str) else thresholds.DEFAULT)
    return Policy(usage, dt.timedelta(seconds=int(seconds)), low)


class Numbers(NamedTuple):
    """The part of an instance that the ledger records and convergence changes.

    Named tuples, not dataclasses: convergence builds millions of them.
    """

    plan_id: str
    credits_total: int
    credits_used: int
    bonus_credits: int
    period_start: dt.datetime
    period_end: dt.datetime
    applied_rev: int


class Desired(NamedTuple):
    """What the subscription and the catalog say an instance must have now."""

    plan_id: str
    credits_total: int | None  # None: the plan is missing from the catalog
    rev: int  # 0 when the instance has no subscription
    event_time: dt.datetime | None  # the newest accepted event's operationTimeStamp
    expired: bool  # the subscription's paid time (plus grace) is over
    rollover: plans.Rollover | None = None  # the desired plan's rule at the monthly reset


class Step(NamedTuple):
    """One ledger-worthy change of an instance's numbers."""

    kind: Kind
    before: Numbers
    after: Numbers
    reason: str
    expires_at: dt.datetime | None = None  # a rollover step's grant expires then


class Change(NamedTuple):
    """Everything convergence did (or would do) to one instance: its steps, in order."""

    instance_id: str
    steps: tuple[Step, ...]

    @property
    def before(self) -> Numbers:
        return self.steps[0].before

    @property
    def after(self) -> Numbers:
        return self.steps[-1].after

    @property
    def kinds(self) -> str:
        return ",".join(step.kind for step in self.steps)


def remaining(credits_total: int, credits_used: int, bonus: int, held: int = 0) -> int:
    """What can still be spent: plan credits left, plus bonus, minus what open holds keep.

    Never below 0: a plan change can leave holds larger than what is left (they stay valid,
    and their commit is charged anyway: `usage.draw`)."""
    return max(plan_left(credits_total, credits_used) + bonus - held, 0)


def plan_left(credits_total: int, credits_used: int) -> int:
    """The period's plan credits not used yet."""
    return max(credits_total - credits_used, 0)


def desired_plan_id(
    status: str | None,
    plan_id: str | None,
    expires_at: dt.datetime | None,
    default_plan_id: str,
    now: dt.datetime,
    grace: dt.timedelta,
) -> tuple[str, bool]:
    """The plan an instance must be on now, and whether its subscription has expired.

    One of the two definitions of desired state; the other is the SQL of `drift.query`.
    `tests/core/test_property.py` keeps them equal: change both together.
    """
    if status is None or plan_id is None or status == "removed":
        return default_plan_id, False
    if expires_at is not None and now >= expires_at + grace:
        return default_plan_id, True
    return plan_id, False


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """`moment` shifted by whole calendar months, the day clamped to the month's length."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def first_period(start: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return start, add_months(start, 1)


def current_period(start: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The monthly period, counted from `start`, that contains `now`."""
    end = add_months(start, 1)
    while end <= now:
        start, end = end, add_months(end, 1)
    return start, end


def transition(
    actual: Numbers, desired: Desired, now: dt.datetime, policy: Policy
) -> list[Step]:
    """The steps that converge `actual` to `desired` at `now`; empty when in sync.

    1. a newly accepted purchase or plan change (`applied_rev != rev`) applies the plan;
       usage resets and a period starts at the event time under `Reset`;
    2. otherwise a plan or allocation that differs from desired is repaired, usage untouched;
    3. a passed `period_end` resets usage and advances the period; when the plan has a
       rollover rule, the period's unused credits (capped at `maxCredits`) become a grant
       expiring `expiresAfter` after the period's end (a `rollover` step; none when that is
       already past). The rule is the plan's at the reset, so a plan change applies the new
       plan's rule from the next reset.
    A plan missing from the catalog leaves plan and allocation as they are.
    """
    steps: list[Step] = []
    current = actual
    if desired.credits_total is not None:
        if current.applied_rev != desired.rev:
            if policy.usage_on_plan_change == UsagePolicy.RESET:
                # the period starts at the purchase; never in the future (clock skew)
                start = min(desired.event_time or now, now)
                used, period = 0, (start, add_months(start, 1))
            else:
                used, period = current.credits_used, (current.period_start, current.period_end)
            target = Numbers(desired.plan_id, desired.credits_total, used,
                             current.bonus_credits, *period, desired.rev)
            steps.append(Step(Kind.PLAN_CHANGE, current, target,
                              f"accepted subscription change (rev {desired.rev})"))
            current = target
        elif current.plan_id != desired.plan_id or current.credits_total != desired.credits_total:
            target = Numbers(desired.plan_id, desired.credits_total, current.credits_used,
                             current.bonus_credits, current.period_start, current.period_end,
                             current.applied_rev)
            if desired.expired:
                steps.append(Step(Kind.EXPIRY, current, target, "subscription expired"))
            else:
                steps.append(Step(Kind.DRIFT_REPAIR, current, target,
                                  _drift_reason(current, desired.plan_id, desired.credits_total)))
            current = target
    if now >= current.period_end:
        start, end = current_period(current.period_end, now)
        target = Numbers(current.plan_id, current.credits_total, 0, current.bonus_credits,
                         start, end, current.applied_rev)
        steps.append(Step(Kind.PERIOD_RESET, current, target, "monthly period ended"))
        rule = desired.rollover if current.plan_id == desired.plan_id else None
        if rule is not None:
            unused = min(max(current.credits_total - current.credits_used, 0),
                         rule.max_credits)
            expires = current.period_end + rule.expires_after
            if unused > 0 and expires > now:
                rolled = target._replace(bonus_credits=target.bonus_credits + unused)
                steps.append(Step(Kind.ROLLOVER, target, rolled,
                                  f"{unused} unused plan credits roll over", expires))
    return steps


def _drift_reason(actual: Numbers, plan_id: str, credits_total: int) -> str:
    if actual.plan_id != plan_id:
        return f"plan {actual.plan_id}, subscription says {plan_id}"
    return f"credits_total {actual.credits_total}, plan {plan_id} pays {credits_total}"
