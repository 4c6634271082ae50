"""The "Sync Credits" button: converge one instance now and show what changed.

The app's dashboard calls it through `POST /api/billing/sync-credits`; it is the same
convergence every other trigger runs, recorded as a `manual` sync run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from creditsync import convergence, instances, policy


@dataclass(frozen=True)
class Resync:
    """An instance's credits before and after a manual sync, and the steps taken."""

    before: instances.Credits
    after: instances.Credits
    summary: convergence.Summary

    @property
    def steps(self) -> list[policy.Step]:
        return [step for change in self.summary.changes for step in change.steps]


def sync_instance(
    engine: Engine, instance_id: str, *, now: dt.datetime, pol: policy.Policy
) -> Resync:
    """Converge `instance_id`; raises `instances.UnknownInstance` if it was never provisioned."""
    before = instances.credits(engine, instance_id, now=now, pol=pol)
    summary = convergence.converge(engine, trigger="manual", actor="manual",
                                   instance_ids=[instance_id], now=now, pol=pol)
    after = instances.credits(engine, instance_id, now=now, pol=pol)
    return Resync(before, after, summary)
