"""What a `CreditSync`'s status says after a run, an audit batch, an error, a suspension or
a bad spec.

Pure functions of the run's summary, the webhook backlog and the audit's report; every
field here is declared in `deploy/crds/creditsyncs.yaml` (the API server would silently
prune anything else). `drifted` is what is still drifted after the run: 0 once everything
converged; in a dry run, everything the run found. `lastAudit` is the last batch of the
periodic marketplace audit; a batch in which not one instance could be checked makes the
resource `Degraded` with reason `MarketplaceUnavailable` until a batch gets answers again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy.exc

from creditsync import audit, convergence, enums
from creditsync.storage import database
from creditsync_operator import conditions
from creditsync_operator.conditions import CONVERGED, DEGRADED, READY, Condition

MAX_MESSAGE = 600
BACKLOG = enums.BACKLOG

# why a run could not happen
DATABASE_UNAVAILABLE = "DatabaseUnavailable"
SYNC_FAILED = "SyncFailed"
INVALID_SPEC = "InvalidSpec"
SUSPENDED = "Suspended"
PLAN_MISSING = "PlanMissing"
MARKETPLACE_UNAVAILABLE = "MarketplaceUnavailable"


def duration(seconds: float) -> str:
    """A Go-style duration string (`1.234s`), as Kubernetes shows durations."""
    return f"{seconds:.3f}s"


def remaining_drift(summary: convergence.Summary) -> int:
    """Instances still drifted after the run (a dry run repairs nothing)."""
    if summary.dry_run:
        return summary.drifted
    return max(summary.drifted - summary.repaired, 0)


def for_run(
    summary: convergence.Summary,
    backlog: Mapping[str, int],
    *,
    generation: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The status fields (merge-patched) after a run."""
    fields: dict[str, Any] = {
        "drifted": remaining_drift(summary),
        "missingPlans": sorted(summary.missing_plans),
        "lastRun": {
            "runId": summary.run_id,
            "trigger": summary.trigger,
            "dryRun": summary.dry_run,
            "startedAt": conditions.timestamp(summary.started_at),
            "scanned": summary.scanned,
            "drifted": summary.drifted,
            "repaired": summary.repaired,
            "failed": summary.failed,
            "planMissing": summary.plan_missing,
            "scope": summary.scope,
            # a full scan's count of what the ticks missed; null (a merge patch removes it)
            # for any other run, so a tick never shows the last full scan's
            "missed": summary.missed,
            "duration": duration(summary.duration_s),
        },
        "webhookBacklog": {status: int(backlog.get(status, 0)) for status in BACKLOG},
    }
    if summary.scope == "all":  # a tick scans only its candidates: the count stays
        fields["instances"] = summary.scanned
    if not summary.dry_run:
        fields["lastSyncTime"] = conditions.timestamp(now)
    if generation is not None:
        fields["observedGeneration"] = generation
    return fields


def run_conditions(summary: convergence.Summary) -> list[Condition]:
    left = remaining_drift(summary)
    if summary.plan_missing:
        plans = ", ".join(sorted(summary.missing_plans))
        missing = (f"{summary.plan_missing:,} instance(s) are on plan(s) {plans}, which the "
                   "catalog no longer has; they keep their credits until the plan is back")
        return [
            Condition(READY, "True", "Synced", f"converged {summary.scanned:,} instances; "
                      f"{missing}"),
            Condition(CONVERGED, "False", PLAN_MISSING, missing),
            Condition(DEGRADED, "True", PLAN_MISSING, missing),
        ]
    if summary.dry_run:
        found = (f"dry run: {summary.drifted:,} of {summary.scanned:,} instances drifted; "
                 "nothing was repaired (spec.dryRun)")
        converged = (Condition(CONVERGED, "True", "InSync", found) if not left
                     else Condition(CONVERGED, "False", "DryRun", found))
        return [Condition(READY, "True", "DryRun", found), converged,
                Condition(DEGRADED, "False", "AsExpected", "")]
    done = (f"{summary.trigger} run: scanned {summary.scanned:,}, repaired "
            f"{summary.repaired:,} of {summary.drifted:,} drifted")
    if summary.missed:
        done += f"; {summary.missed:,} of them missed by the ticks"
    in_sync = (f"all {summary.scanned:,} instances match their plans" if summary.scope == "all"
               else f"the {summary.scanned:,} instances that can have changed match their plans")
    converged = (
        Condition(CONVERGED, "True", "InSync", in_sync)
        if not left else
        Condition(CONVERGED, "False", "DriftRemaining", f"{left:,} instance(s) could not be "
                  "repaired (concurrent usage won the race); they are retried on the next run")
    )
    return [Condition(READY, "True", "Synced", done), converged,
            Condition(DEGRADED, "False", "AsExpected", "")]


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message: the driver's own words, not SQLAlchemy's wrapping."""
    inner = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig else exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def error_reason(exc: BaseException) -> str:
    return DATABASE_UNAVAILABLE if database.is_unavailable(exc) else SYNC_FAILED


def error_conditions(reason: str, message: str, retry_in: float) -> list[Condition]:
    text = f"{message} (retrying in {retry_in:.0f}s)"
    return [
        Condition(READY, "False", reason, text),
        Condition(CONVERGED, "Unknown", reason, "no run could complete"),
        Condition(DEGRADED, "True", reason, text),
    ]


def suspended_conditions() -> list[Condition]:
    why = "spec.suspend is true: no convergence until it is false"
    return [Condition(READY, "True", SUSPENDED, why), Condition(CONVERGED, "Unknown", SUSPENDED,
                                                                why)]


def invalid_conditions(message: str) -> list[Condition]:
    return [
        Condition(READY, "False", INVALID_SPEC, message),
        Condition(CONVERGED, "Unknown", INVALID_SPEC, "no run until the spec is fixed"),
        Condition(DEGRADED, "True", INVALID_SPEC, message),
    ]


def degraded(updates: list[Condition]) -> Condition | None:
    """The Degraded condition among `updates`, if they set one."""
    return next((c for c in updates if c.type == DEGRADED), None)


def for_audit(report: audit.Report, *, now: dt.datetime) -> dict[str, Any]:
    """The status fields (merge-patched) after a batch of the periodic audit."""
    return {"lastAudit": {"time": conditions.timestamp(now), "checked": report.checked,
                          "disagreed": report.disagreed, "healed": report.healed,
                          "errors": report.errors}}


def audit_failure(report: audit.Report) -> str | None:
    """Why the marketplace failed the whole batch, or None when it answered at all.

    One instance the marketplace cannot answer for (a site that removed the app: 401) is
    that instance's trouble, counted in `errors`; a batch with no answer at all is ours.
    """
    if report.checked or not report.errors:
        return None
    instance, why = report.failures[0] if report.failures else ("?", "no answer")
    text = (f"the marketplace audit could not check any of {report.errors:,} instance(s); "
            f"{instance}: {why}. Nothing was changed and the audit tries again on its own; "
            "if this persists, check the marketplace's status and CREDITSYNC_WIX_API_URL "
            "(for 401/403, CREDITSYNC_WIX_APP_ID and CREDITSYNC_APP_SECRET)")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def marketplace_degraded(message: str) -> Condition:
    return Condition(DEGRADED, "True", MARKETPLACE_UNAVAILABLE, message)


def as_expected() -> Condition:
    return Condition(DEGRADED, "False", "AsExpected", "")
