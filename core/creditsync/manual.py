"""The "Sync Credits" button: converge one instance now and show what changed.

The app's dashboard calls it through `POST /api/billing/sync-credits`; it is the same
convergence every other trigger runs, recorded as a `manual` sync run.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import alerts, audit, convergence, enums, errors, instances, marketplace, policy
from creditsync.storage import database, models

_i = models.INSTANCES
INTERVAL = dt.timedelta(seconds=5)  # one Sync Credits call per instance per window


@dataclass(frozen=True)
class Resync:
    """An instance's credits before and after a manual sync, and the steps taken."""

    before: instances.Credits
    after: instances.Credits
    summary: convergence.Summary
    marketplace: audit.Disagreement | None = None  # the marketplace changed the plan
    marketplace_error: str | None = None  # it could not be asked (nothing changed)

    @property
    def steps(self) -> list[policy.Step]:
        return [step for change in self.summary.changes for step in change.steps]


def claim_window(
    engine: Engine, instance_id: str, now: dt.datetime, interval: dt.timedelta = INTERVAL
) -> None:
    """Start this instance's manual-sync window, or raise `RateLimited` if one is open.

    One guarded update of the instance's `last_manual_sync_at`, committed at once: every
    API replica shares it, so N replicas still allow one call per window.
    """
    with database.write(engine) as conn:
        claimed = conn.execute(_i.update().where(
            _i.c.instance_id == instance_id,
            sa.or_(_i.c.last_manual_sync_at.is_(None),
                   _i.c.last_manual_sync_at <= now - interval,
                   _i.c.last_manual_sync_at > now),  # a clock that went back frees it
        ).values(last_manual_sync_at=now)).rowcount
        if claimed:
            return
        last = conn.execute(sa.select(_i.c.last_manual_sync_at)
                            .where(_i.c.instance_id == instance_id)).first()
    if last is None:
        raise errors.UnknownInstance(instance_id)
    wait = max(math.ceil((last[0] + interval - now).total_seconds()), 1)
    raise errors.RateLimited(
        f"this instance was synced less than {int(interval.total_seconds())} seconds ago: "
        f"retry in {wait} s", retry_after=wait)


def sync_instance(
    engine: Engine, instance_id: str, *, now: dt.datetime, pol: policy.Policy | None = None,
    interval: dt.timedelta | None = INTERVAL, client: marketplace.Client | None = None,
    alerter: alerts.Alerter | None = None,
) -> Resync:
    """Converge `instance_id` (at most once per `interval`; None: no limit), after asking
    the marketplace what it pays for when `client` is given.

    Raises `errors.UnknownInstance` if it was never provisioned, `errors.RateLimited` when
    called again within the window.
    """
    if interval is not None:
        claim_window(engine, instance_id, now, interval)
    before = instances.credits(engine, instance_id, now=now, pol=pol)
    seen, error = (None, None) if client is None else audit.ask(
        engine, client, instance_id, now=lambda: now, alerter=alerter)
    summary = convergence.converge(engine, trigger=enums.Trigger.MANUAL,
                                   actor=enums.Actor.MANUAL, instance_ids=[instance_id],
                                   now=now, pol=pol)
    after = instances.credits(engine, instance_id, now=now, pol=pol)
    return Resync(before, after, summary, seen, error)
