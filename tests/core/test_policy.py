"""The transition policy, table-driven: what convergence does to one instance."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from creditsync import policy
from tests.support.times import T0

DAY = dt.timedelta(days=1)


def numbers(plan: str = "free", total: int = 100, used: int = 40, bonus: int = 7,
            rev: int = 1, end: dt.datetime = T0 + 20 * DAY) -> policy.Numbers:
    return policy.Numbers(plan, total, used, bonus, end - 31 * DAY, end, rev)


def desired(plan: str = "free", total: int | None = 100, rev: int = 1,
            event: dt.datetime | None = T0 - DAY, expired: bool = False) -> policy.Desired:
    return policy.Desired(plan, total, rev, event, expired)


RESET = policy.Policy("Reset")
FEB9 = dt.datetime(2026, 2, 9, 12, tzinfo=dt.UTC)
PRESERVE = policy.Policy("Preserve")


@pytest.mark.parametrize(
    ("actual", "want", "pol", "kinds", "after"),
    [
        pytest.param(numbers(), desired(), RESET, [], None, id="in-sync"),
        pytest.param(
            numbers(rev=1), desired("pro", 5000, rev=2, event=T0 - DAY), RESET,
            ["plan_change"],
            policy.Numbers("pro", 5000, 0, 7, T0 - DAY, FEB9, 2),
            id="purchase-resets-usage-and-starts-period-at-event"),
        pytest.param(
            numbers(rev=1), desired("pro", 5000, rev=2), PRESERVE, ["plan_change"],
            policy.Numbers("pro", 5000, 40, 7, T0 - 11 * DAY, T0 + 20 * DAY, 2),
            id="purchase-preserves-usage"),
        pytest.param(
            numbers(plan="free", total=100, rev=2), desired("pro", 5000, rev=2), RESET,
            ["drift_repair"],
            policy.Numbers("pro", 5000, 40, 7, T0 - 11 * DAY, T0 + 20 * DAY, 2),
            id="missed-webhook-repairs-without-touching-usage"),
        pytest.param(
            numbers(plan="pro", total=5000), desired("pro", 6000), RESET, ["drift_repair"],
            policy.Numbers("pro", 6000, 40, 7, T0 - 11 * DAY, T0 + 20 * DAY, 1),
            id="catalog-change"),
        pytest.param(
            numbers(plan="pro", total=5000), desired("free", 100, expired=True), RESET,
            ["expiry"],
            policy.Numbers("free", 100, 40, 7, T0 - 11 * DAY, T0 + 20 * DAY, 1),
            id="expiry-falls-back-to-default"),
        pytest.param(
            numbers(end=T0 - DAY), desired(), RESET, ["period_reset"],
            policy.Numbers("free", 100, 0, 7, T0 - DAY, FEB9, 1),
            id="monthly-reset"),
        pytest.param(
            numbers(end=T0 - 40 * DAY), desired(), RESET, ["period_reset"],
            policy.Numbers("free", 100, 0, 7, dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC),
                           dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC), 1),
            id="missed-resets-advance-whole-months"),
        pytest.param(
            numbers(plan="pro", total=5000), desired("pro", None), RESET, [], None,
            id="plan-missing-leaves-instance-alone"),
        pytest.param(
            numbers(plan="free", total=100, rev=1, end=T0 - DAY), desired("pro", 5000, rev=1),
            PRESERVE, ["drift_repair", "period_reset"],
            policy.Numbers("pro", 5000, 0, 7, T0 - DAY, FEB9, 1),
            id="repair-and-reset-are-two-steps"),
    ],
)
def test_transition(actual: policy.Numbers, want: policy.Desired, pol: policy.Policy,
                    kinds: list[str], after: policy.Numbers | None) -> None:
    steps = policy.transition(actual, want, T0, pol)
    assert [s.kind for s in steps] == kinds
    if after is not None:
        assert steps[-1].after == after
        assert steps[0].before == actual
    for first, second in itertools.pairwise(steps):
        assert first.after == second.before


def test_transition_is_idempotent() -> None:
    steps = policy.transition(numbers(rev=1), desired("pro", 5000, rev=2), T0, RESET)
    assert policy.transition(steps[-1].after, desired("pro", 5000, rev=2), T0, RESET) == []


@pytest.mark.parametrize(
    ("status", "expires", "grace", "want"),
    [
        (None, None, dt.timedelta(0), ("free", False)),
        ("active", None, dt.timedelta(0), ("pro", False)),
        ("cancelled", T0 + DAY, dt.timedelta(0), ("pro", False)),
        ("cancelled", T0 - DAY, dt.timedelta(0), ("free", True)),
        ("cancelled", T0 - DAY, 2 * DAY, ("pro", False)),
        ("cancelled", T0, dt.timedelta(0), ("free", True)),
        ("removed", None, dt.timedelta(0), ("free", False)),
    ],
)
def test_desired_plan(status: str | None, expires: dt.datetime | None, grace: dt.timedelta,
                      want: tuple[str, bool]) -> None:
    assert policy.desired_plan_id(status, "pro", expires, "free", T0, grace) == want


@pytest.mark.parametrize(
    ("start", "months", "want"),
    [
        (dt.datetime(2026, 1, 31, tzinfo=dt.UTC), 1, dt.datetime(2026, 2, 28, tzinfo=dt.UTC)),
        (dt.datetime(2024, 1, 31, tzinfo=dt.UTC), 1, dt.datetime(2024, 2, 29, tzinfo=dt.UTC)),
        (dt.datetime(2026, 12, 15, tzinfo=dt.UTC), 1, dt.datetime(2027, 1, 15, tzinfo=dt.UTC)),
        (dt.datetime(2026, 3, 1, tzinfo=dt.UTC), 14, dt.datetime(2027, 5, 1, tzinfo=dt.UTC)),
    ],
)
def test_add_months(start: dt.datetime, months: int, want: dt.datetime) -> None:
    assert policy.add_months(start, months) == want
