"""CreditSync status after a run, an error, a suspension: exact payloads."""

from __future__ import annotations

import psycopg
import sqlalchemy.exc

from creditsync_operator import status
from creditsync_operator.conditions import Condition
from tests.operator.helpers import summary
from tests.support.times import T0

BACKLOG = {"applied": 7, "pending": 1, "quarantined": 2, "failed": 3, "duplicate": 4}


def test_fields_after_a_run_that_repaired_everything() -> None:
    done = summary(scanned=200, drifted=40, repaired=40, missed=0, trigger="full_scan")
    assert status.for_run(done, BACKLOG, generation=5, now=T0) == {
        "instances": 200,
        "drifted": 0,
        "missingPlans": [],
        "lastRun": {"runId": "run-1", "trigger": "full_scan", "dryRun": False,
                    "startedAt": "2026-01-10T12:00:00Z", "scanned": 200, "drifted": 40,
                    "repaired": 40, "failed": 0, "planMissing": 0, "scope": "all",
                    "missed": 0, "duration": "0.250s"},
        "webhookBacklog": {"pending": 1, "quarantined": 2, "failed": 3},
        "lastSyncTime": "2026-01-10T12:00:00Z",
        "observedGeneration": 5,
    }
    assert status.run_conditions(done) == [
        Condition("Ready", "True", "Synced",
                  "full_scan run: scanned 200, repaired 40 of 40 drifted"),
        Condition("Converged", "True", "InSync", "all 200 instances match their plans"),
        Condition("Degraded", "False", "AsExpected", ""),
    ]


def test_a_tick_leaves_the_instance_count_and_a_full_scan_says_what_ticks_missed() -> None:
    tick = summary(scanned=3, drifted=3, repaired=3, trigger="tick", scope="changed")
    fields = status.for_run(tick, {}, generation=1, now=T0)
    assert "instances" not in fields
    assert fields["lastRun"]["missed"] is None  # removed by the merge patch
    assert (fields["lastRun"]["scope"], fields["lastRun"]["scanned"]) == ("changed", 3)
    assert status.run_conditions(tick)[1] == Condition(
        "Converged", "True", "InSync", "the 3 instances that can have changed match their plans")
    audit = summary(scanned=500, drifted=2, repaired=2, missed=2, trigger="full_scan")
    assert status.for_run(audit, {}, generation=1, now=T0)["lastRun"]["missed"] == 2
    assert status.run_conditions(audit)[0].message == (
        "full_scan run: scanned 500, repaired 2 of 2 drifted; 2 of them missed by the ticks")


def test_a_dry_run_reports_what_it_found_and_is_not_a_sync() -> None:
    found = summary(scanned=50, drifted=5, repaired=5, dry_run=True)
    fields = status.for_run(found, {}, generation=1, now=T0)
    assert fields["drifted"] == 5
    assert "lastSyncTime" not in fields
    assert fields["webhookBacklog"] == {"pending": 0, "quarantined": 0, "failed": 0}
    ready, converged, degraded = status.run_conditions(found)
    assert (ready.status, ready.reason) == ("True", "DryRun")
    assert (converged.status, converged.reason) == ("False", "DryRun")
    assert degraded.status == "False"


def test_instances_on_a_missing_plan_make_it_degraded() -> None:
    left = summary(scanned=100, drifted=10, plan_missing=10, missing=("scale",))
    fields = status.for_run(left, {}, generation=1, now=T0)
    assert (fields["drifted"], fields["missingPlans"]) == (10, ["scale"])
    ready, converged, degraded = status.run_conditions(left)
    assert ready.status == "True"
    assert (converged.status, converged.reason) == ("False", "PlanMissing")
    assert (degraded.status, degraded.reason) == ("True", "PlanMissing")
    assert "10 instance(s) are on plan(s) scale" in degraded.message
    assert "keep their credits" in degraded.message


def test_unrepaired_instances_leave_it_not_converged_but_not_degraded() -> None:
    _, converged, degraded = status.run_conditions(summary(drifted=3, repaired=1, failed=2))
    assert (converged.status, converged.reason) == ("False", "DriftRemaining")
    assert degraded.status == "False"


def test_a_database_error_is_degraded_with_the_drivers_words() -> None:
    inner = psycopg.OperationalError("connection refused\n  is the server running?")
    exc = sqlalchemy.exc.OperationalError("SELECT 1", {}, inner)
    assert status.error_reason(exc) == "DatabaseUnavailable"
    assert status.describe_error(exc) == "connection refused is the server running?"
    assert status.error_conditions("DatabaseUnavailable", "refused", 4.0) == [
        Condition("Ready", "False", "DatabaseUnavailable", "refused (retrying in 4s)"),
        Condition("Converged", "Unknown", "DatabaseUnavailable", "no run could complete"),
        Condition("Degraded", "True", "DatabaseUnavailable", "refused (retrying in 4s)"),
    ]


def test_other_errors_are_sync_failures_with_a_bounded_message() -> None:
    exc = RuntimeError("x" * 5000)
    assert status.error_reason(exc) == "SyncFailed"
    assert len(status.describe_error(exc)) == status.MAX_MESSAGE


def test_suspended_and_invalid() -> None:
    assert [c.reason for c in status.suspended_conditions()] == ["Suspended", "Suspended"]
    invalid = status.invalid_conditions("spec.interval must be at least 1s")
    assert status.degraded(invalid) == Condition(
        "Degraded", "True", "InvalidSpec", "spec.interval must be at least 1s")
    assert status.degraded(status.suspended_conditions()) is None
