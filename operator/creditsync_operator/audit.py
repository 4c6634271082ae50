"""The periodic marketplace audit of a `CreditSync`: a second kopf daemon beside `converge`.

A daemon of its own, not a turn of the `converge` loop: one audit batch is up to
`runner.AUDIT_BATCH_S` seconds of marketplace requests at the configured rate, and inside
`converge` it would hold back a CreditPlan change's run or a due timer run for that long.
Here the batch runs on kopf's thread pool (`state.blocking`) while `converge` keeps its own
schedule. One runner is active: kopf's peering pauses the daemons of a standby operator,
and `runner.guarded_audit` takes the database's audit lock, so an operator replica and a
`creditsync run` never audit at once (a held lock is a quiet skip).

With the marketplace source off (no `CREDITSYNC_WIX_APP_ID`) the daemon ends at once.
Otherwise it looks at the live spec every `POLL` seconds. While `spec.marketplaceAudit.interval`
is not `0` (and the spec is valid, not suspended, not a dry run: the audit heals, which is a
repair), it audits one batch of the installed instances not checked for that interval, least
recently checked first; a batch that checked anyone is followed at once by the next, else it
rests (`runner.AUDIT_IDLE_S`, or the interval if shorter). So each instance is asked about
about once per interval, within `CREDITSYNC_MARKETPLACE_RATE`.

After each batch it writes `lastAudit` {time, checked, disagreed, healed, errors} through
`sync.report`. A batch in which not one instance could be checked (every lookup failed:
the marketplace down or rate limiting, or the app's credentials rejected) sets `Degraded`
with reason `MarketplaceUnavailable`, with the Event and alert of any Degraded; the first
batch with an answer clears it. One instance the marketplace refuses (a site that removed
the app) only counts in `errors`. A run's own Degraded reason (database down, a missing
plan) wins over the audit's; `converge` keeps the audit's while the audit has no answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from creditsync import audit as audits
from creditsync import clock, marketplace, runner
from creditsync_operator import resources, schedule, specs, state, status, sync
from creditsync_operator.conditions import Condition

log = logging.getLogger("creditsync.operator.audit")

POLL = 0.5  # how often the daemon looks at its spec


def _audit_batch(shared: state.Shared, client: marketplace.Client, interval: dt.timedelta,
                 should_stop: Callable[[], bool]) -> audits.Report | None:
    return runner.guarded_audit(shared.engine, client, interval, alerter=shared.alerter,
                                should_stop=should_stop)


def _interval(parsed: specs.SyncSpec | specs.SpecError) -> dt.timedelta | None:
    """The audit interval when the spec audits at all."""
    if isinstance(parsed, specs.SyncSpec) and parsed.audits:
        return parsed.audit_interval
    return None


def rest(interval: dt.timedelta) -> float:
    """Seconds between looks for due instances when the last batch found none."""
    return min(runner.AUDIT_IDLE_S, interval.total_seconds())


async def report_batch(shared: state.Shared, loop: schedule.LoopState, body: kopf.Body,
                       found: audits.Report) -> None:
    """`lastAudit`, and Degraded `MarketplaceUnavailable` set or cleared by this batch."""
    failure = status.audit_failure(found)
    loop.marketplace = failure
    reason = sync.degraded_reason(shared, loop, body)
    updates: list[Condition] = []
    if failure and reason in ("", status.MARKETPLACE_UNAVAILABLE):
        updates = [status.marketplace_degraded(failure)]
    elif not failure and reason == status.MARKETPLACE_UNAVAILABLE:
        updates = [status.as_expected()]
    await sync.report(shared, loop, body, status.for_audit(found, now=clock.utcnow()), updates,
                      body.metadata.get("generation"), observe=False)


async def audit_once(shared: state.Shared, client: marketplace.Client, loop: schedule.LoopState,
                     body: kopf.Body, interval: dt.timedelta,
                     should_stop: Callable[[], bool]) -> bool:
    """One batch and its report; True when it checked anyone (the next may be due too)."""
    try:
        found = await state.blocking(shared.executor, _audit_batch, shared, client, interval,
                                     should_stop)
    except Exception as exc:  # the database: the convergence loop reports it
        log.warning("CreditSync %s/%s: the marketplace audit failed: %s; retrying in %.0fs",
                    body.metadata.get("namespace"), body.metadata.get("name"),
                    status.describe_error(exc), rest(interval))
        return False
    if found is None or not found.checked + found.errors:
        return False
    await report_batch(shared, loop, body, found)
    # a batch the marketplace could not answer at all rests (its instances are asked again
    # `audit.UNANSWERED_RETRY` later) instead of retrying at once
    return found.checked > 0


async def stand_down(shared: state.Shared, loop: schedule.LoopState, body: kopf.Body) -> None:
    """The spec stopped the audit: a MarketplaceUnavailable it set no longer holds."""
    loop.marketplace = None
    if sync.degraded_reason(shared, loop, body) == status.MARKETPLACE_UNAVAILABLE:
        await sync.report(shared, loop, body, {}, [status.as_expected()],
                          body.metadata.get("generation"), observe=False)


@kopf.daemon(*resources.CREDITSYNCS, id="audit", cancellation_timeout=sync.CANCELLATION_TIMEOUT)
async def audit(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo,
                stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Audit this CreditSync's instances on `spec.marketplaceAudit.interval`, until stopped."""
    shared = state.shared(memo)
    client = shared.marketplace
    if client is None:
        log.debug("the marketplace source is off (CREDITSYNC_WIX_APP_ID): no audit")
        return
    loop = state.loop_state(memo)  # the converge daemon's too: one Degraded between them
    due = 0.0
    auditing = False
    while not stopped:
        interval = _interval(sync.parse(spec))  # `spec` is a live view of the object
        if interval is None:
            if auditing or loop.marketplace:
                await stand_down(shared, loop, body)
            auditing, due = False, 0.0
        elif time.monotonic() >= due:
            auditing = True
            busy = await audit_once(shared, client, loop, body, interval,
                                    lambda: bool(stopped))  # thread-safe in kopf
            due = time.monotonic() + (0.0 if busy else rest(interval))
        await stopped.wait(POLL)
