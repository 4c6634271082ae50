"""Events are aggregated: one per run and kind, naming a few instances."""

from __future__ import annotations

from creditsync_operator import events
from tests.operator.helpers import change, summary


def test_a_huge_run_is_one_event_naming_five() -> None:
    found = events.for_run(summary(scanned=250_000, drifted=100_000, repaired=100_000))
    assert len(found) == 1
    event = found[0]
    assert (event.type, event.reason) == ("Normal", "Repaired")
    assert event.message == (
        "timer run repaired 100,000 of 250,000 instances: "
        "inst-000 (free 100 → pro 5,000), inst-001 (free 100 → pro 5,000), "
        "inst-002 (free 100 → pro 5,000), inst-003 (free 100 → pro 5,000), "
        "inst-004 (free 100 → pro 5,000) and 99,995 more")


def test_nothing_drifted_posts_nothing() -> None:
    assert events.for_run(summary(scanned=10)) == []


def test_a_dry_run_warns_about_drift_and_repairs_nothing() -> None:
    [event] = events.for_run(summary(drifted=2, repaired=2, dry_run=True))
    assert (event.type, event.reason) == ("Warning", "DriftFound")
    assert event.message.startswith("dry run found 2 of 10 instances drifted, not repaired: ")


def test_failed_repairs_are_a_warning_and_missing_plans_are_not_an_event_per_run() -> None:
    found = events.for_run(summary(drifted=5, repaired=1, failed=2, plan_missing=2,
                                   missing=("scale",)))
    assert [(e.type, e.reason) for e in found] == [("Normal", "Repaired"),
                                                   ("Warning", "RepairFailed")]


def test_messages_stay_short_and_a_period_reset_is_described_by_kind() -> None:
    many = summary(repaired=1)
    many.changes[:] = [change("i" * 400, ("free", 100), ("pro", 5000)) for _ in range(5)]
    assert len(events.for_run(many)[0].message) == events.MAX_MESSAGE
    reset = change("inst-9", ("pro", 5000), ("pro", 5000), kind="period_reset")
    assert events.describe(reset) == "inst-9 (period_reset)"
