"""Kubernetes Events for runs, aggregated: one Event per run and kind, naming a few instances.

A run that repaired 100,000 instances posts one `Repaired` Event that names the first few
and counts the rest, never 100,000 Events. Messages stay under the API's size limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import kopf

from creditsync import convergence, policy

SAMPLE = 5
MAX_MESSAGE = 1000

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


def describe(change: policy.Change) -> str:
    """`inst-1 (free 100 → pro 5,000)`: one instance's change, in a few words."""
    before, after = change.before, change.after
    if before.plan_id == after.plan_id and before.credits_total == after.credits_total:
        return f"{change.instance_id} ({change.kinds})"
    return (f"{change.instance_id} ({before.plan_id} {before.credits_total:,} → "
            f"{after.plan_id} {after.credits_total:,})")


def _cap(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def _examples(summary: convergence.Summary, total: int) -> str:
    shown = [describe(c) for c in summary.changes[:SAMPLE]]
    if not shown:
        return ""
    more = total - len(shown)
    return ": " + ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def for_run(summary: convergence.Summary) -> list[Event]:
    """The Events one run deserves (none when nothing drifted).

    Instances on a missing plan are not an Event per run: the `Degraded`/`PlanMissing`
    transition posts one.
    """
    found: list[Event] = []
    if summary.repaired and not summary.dry_run:
        found.append(Event("Normal", "Repaired", _cap(
            f"{summary.trigger} run repaired {summary.repaired:,} of {summary.scanned:,} "
            f"instances{_examples(summary, summary.repaired)}")))
    if summary.dry_run and summary.drifted:
        found.append(Event("Warning", "DriftFound", _cap(
            f"dry run found {summary.drifted:,} of {summary.scanned:,} instances drifted, "
            f"not repaired{_examples(summary, summary.repaired)}")))
    if summary.failed:
        found.append(Event("Warning", "RepairFailed", _cap(
            f"{summary.failed:,} instance(s) could not be repaired (concurrent usage kept "
            "winning the race); they are retried on the next run")))
    return found


def post(body: Any, found: Iterable[Event]) -> None:
    """Queue `found` for posting (kopf posts in the background; this never blocks)."""
    for event in found:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
