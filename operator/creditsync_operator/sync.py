"""`CreditSync` daemon: a full scan at start-up and every `spec.fullScanInterval`; a tick
(only what can have changed) every `spec.interval` and after plan changes.

One kopf daemon per CreditSync: a loop that waits between runs is what kopf's daemons are for
(a timer runs and returns). Every `POLL` seconds the loop looks, in memory, at the live spec
and the catalog change counter and asks `schedule.decide` whether it is time; so a changed
`interval`, `suspend` or `dryRun` and a CreditPlan change take effect within a fraction of a
second, without a restart. When it is time, it runs one guarded convergence (lock, due inbox
retries, set-based repair) on kopf's thread pool; between runs it retries due inbox events
and expires due grants every few seconds. It ends as soon as kopf sets `stopped` (SIGTERM,
deletion, a peering pause).

Not a timer: kopf's timers cannot follow a live `spec.interval`, and a timer ticking fast
enough to react promptly would log a line per tick ("Timer 'converge' succeeded.") twice a
second, forever. The price of the daemon: kopf applies a daemon's `patch` only when the
daemon exits, so after each run the loop writes the status itself (`kube`), at once and in
one merge patch — conditions `Ready`/`Converged`/`Degraded` (merged into the live body's,
as `conditions.merge` keeps transition times, and guarded by that body's resourceVersion),
`instances`, `drifted`, `lastSyncTime`, `lastRun`, `webhookBacklog`, `observedGeneration`.

A failed run marks the resource `Degraded` with the error and is retried with a growing
backoff (`schedule.failed`); the first good run clears it. Repairs become one aggregated
Event per run; drift, webhook trouble and Degraded send alerts.

The periodic marketplace audit is a second daemon (`audit`) that reports through `report`
too. Both share the object's `LoopState`: a run that is not degraded itself keeps the
audit's `MarketplaceUnavailable`, and the audit never overwrites a run's own reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from creditsync import alerts, clock, convergence, inbox, policy_store, runner, thresholds
from creditsync_operator import (
    conditions,
    events,
    kube,
    resources,
    schedule,
    specs,
    state,
    status,
)
from creditsync_operator.conditions import Condition

log = logging.getLogger("creditsync.operator.sync")

POLL = 0.5  # how often the loop looks at its spec and the catalog change counter
INBOX_EVERY = 5.0  # due inbox retries and expired holds between runs
WRITE_ATTEMPTS = 5  # a status write computed from a body that changed meanwhile is redone
WRITE_RETRY = 0.2  # by then kopf's watch has brought the newer body
CANCELLATION_TIMEOUT = 5.0  # a run still busy after `stopped` (and kopf's wait) is cancelled


@dataclass(frozen=True)
class Outcome:
    """One run: None when another runner held the convergence lock."""

    summary: convergence.Summary | None
    backlog: dict[str, int] = field(default_factory=dict)


def store_policy(shared: state.Shared, spec: specs.SyncSpec, source: str) -> None:
    """Make the spec's policy the one every process converges with (webhooks included)."""
    if policy_store.store(shared.engine, spec.pol, source, clock.utcnow()):
        log.info("policy from %s: usageOnPlanChange %s, expiryGracePeriod %ss, "
                 "lowCreditThresholds %s", source, spec.pol.usage_on_plan_change,
                 int(spec.pol.expiry_grace_period.total_seconds()),
                 thresholds.text_of(spec.pol.low_credit_thresholds),
                 extra={"policy_source": source})


def run_once(
    shared: state.Shared, spec: specs.SyncSpec, trigger: str, source: str = ""
) -> Outcome:
    """Store the spec's policy, converge (blocking), then read the webhook backlog and the
    per-plan counts. A dry run stores nothing and converges with the spec's policy."""
    if not spec.dry_run and source:
        store_policy(shared, spec, source)
    summary = runner.guarded_run(shared.engine, trigger=trigger,
                                 pol=spec.pol if spec.dry_run else None,
                                 batch_size=spec.batch_size, dry_run=spec.dry_run)
    if summary is None:
        return Outcome(None)
    backlog = inbox.counts(shared.engine)
    if summary.scope == "all" or summary.repaired:  # an idle tick moved nobody between plans
        shared.refresh_counts()
    return Outcome(summary, backlog)


def parse(spec: kopf.Spec) -> specs.SyncSpec | specs.SpecError:
    try:
        return specs.parse_sync(spec)
    except specs.SpecError as exc:
        return exc


async def _frequent(shared: state.Shared) -> None:
    """Between runs: due inbox retries, the expiry of holds past their TTL, due grant
    expiries."""
    try:
        await state.blocking(shared.executor, runner.frequent, shared.engine)
    except Exception as exc:  # the next run reports the database's state
        log.debug("inbox retry or grant expiry failed: %s", status.describe_error(exc))


def _where(meta: kopf.Meta) -> str:
    return f"CreditSync {meta.get('namespace')}/{meta.get('name')}"


def _patch_status(shared: state.Shared, namespace: str, name: str, fields: dict[str, Any],
                  resource_version: str | None) -> None:
    shared.status_api().patch_status("creditsyncs", namespace, name, fields,
                                     resource_version=resource_version)


async def write_status(
    shared: state.Shared, body: kopf.Body, fields: dict[str, Any], updates: list[Condition],
    *, generation: int | None, now: dt.datetime, observe: bool = True,
) -> bool:
    """Merge-patch `fields` and `updates` into the status now; False when it did not land.

    The conditions are merged into the live body's and sent whole, with the body's
    resourceVersion: if the object changed meanwhile, the write is computed again from the
    newer body that kopf's watch brings. `observe` False leaves `observedGeneration` to the
    convergence loop (an audit batch has not acted on a new spec's other fields).
    """
    meta = body.metadata
    observed = {"observedGeneration": generation} if observe else {}
    for _ in range(WRITE_ATTEMPTS):
        patch = {**fields, **observed,
                 "conditions": conditions.merge(body.status.get("conditions") or [], updates,
                                                generation=generation, now=now)}
        try:
            await state.blocking(shared.executor, _patch_status, shared, str(meta.namespace),
                                 str(meta.name), patch, meta.get("resourceVersion"))
            return True
        except kube.Conflict:
            await asyncio.sleep(WRITE_RETRY)
        except Exception as exc:  # the next run writes its status again
            log.warning("cannot write the status of %s: %s", _where(meta),
                        status.describe_error(exc))
            return False
    log.warning("cannot write the status of %s: it kept changing meanwhile", _where(meta))
    return False


def degraded_reason(shared: state.Shared, loop: schedule.LoopState, body: kopf.Body) -> str:
    """The reason of the Degraded written last ("": not degraded), read from the status on
    the first report since start (a `MarketplaceUnavailable` stands until the audit gets an
    answer, if this operator audits at all)."""
    if loop.degraded is None:
        old = conditions.get(body.status.get("conditions"), conditions.DEGRADED)
        loop.degraded = str(old.get("reason")) if old and old.get("status") == "True" else ""
        if (old and loop.degraded == status.MARKETPLACE_UNAVAILABLE
                and shared.marketplace is not None and loop.marketplace is None):
            loop.marketplace = str(old.get("message") or "the marketplace did not answer")
    return loop.degraded


async def report(
    shared: state.Shared, loop: schedule.LoopState, body: kopf.Body, fields: dict[str, Any],
    updates: list[Condition], generation: int | None, *, observe: bool = True,
) -> None:
    """Write `fields` and `updates`; on entering or leaving Degraded, post an Event and alert.

    A Degraded False while the audit gets no answer from the marketplace says
    `MarketplaceUnavailable` instead.
    """
    degraded_reason(shared, loop, body)
    cond = status.degraded(updates)
    if cond is not None and cond.status == "False" and loop.marketplace:
        cond = status.marketplace_degraded(loop.marketplace)
        updates = [u for u in updates if u.type != conditions.DEGRADED] + [cond]
    await write_status(shared, body, fields, updates, generation=generation,
                       now=clock.utcnow(), observe=observe)
    if cond is None:
        return
    was, now = loop.degraded, cond.reason if cond.status == "True" else ""
    loop.degraded = now
    where = _where(body.metadata)
    if now and now != was:
        kopf.event(body, type="Warning", reason="Degraded", message=f"{now}: {cond.message}")
        shared.alert(alerts.degraded(where, now, cond.message))
    elif was and not now:
        why = ("the marketplace answered the last audit batch"
               if was == status.MARKETPLACE_UNAVAILABLE else "the last run succeeded")
        kopf.event(body, type="Normal", reason="Recovered", message=f"no longer {was}")
        shared.alert(alerts.recovered(where, f"No longer {was}: {why}."))


async def act(shared: state.Shared, loop: schedule.LoopState, body: kopf.Body,
              decision: schedule.Decision) -> None:
    """Do what `decision` says (report a bad or suspended spec, or run), and report it."""
    meta = body.metadata
    generation = meta.get("generation")
    if decision.kind == "invalid":
        schedule.reported(loop, "invalid", generation)
        kopf.event(body, type="Warning", reason=status.INVALID_SPEC, message=decision.error)
        await report(shared, loop, body, {}, status.invalid_conditions(decision.error),
                      generation)
        return
    if decision.kind == "suspended" or decision.spec is None:
        schedule.reported(loop, "suspended", generation)
        kopf.event(body, type="Normal", reason=status.SUSPENDED, message="convergence suspended")
        await report(shared, loop, body, {}, status.suspended_conditions(), generation)
        return

    schedule.started(loop, generation=generation, plan_generation=shared.plan_generation,
                     now=time.monotonic(), trigger=decision.trigger)
    try:
        outcome = await state.blocking(
            shared.executor, run_once, shared, decision.spec, decision.trigger,
            policy_store.creditsync_source(meta.get("namespace"), meta.get("name")))
    except Exception as exc:
        delay = schedule.failed(loop, decision.trigger, time.monotonic())
        reason, message = status.error_reason(exc), status.describe_error(exc)
        log.warning("%s: the %s run failed (%s: %s); retrying in %.0fs", _where(meta),
                    decision.trigger, reason, message, delay)
        await report(shared, loop, body, {}, status.error_conditions(reason, message, delay),
                      generation)
        return
    summary = outcome.summary
    if summary is None:
        schedule.skipped(loop, decision.trigger, time.monotonic())
        return
    schedule.succeeded(loop)
    fields = status.for_run(summary, outcome.backlog, generation=generation,
                            now=clock.utcnow())
    await report(shared, loop, body, fields, status.run_conditions(summary), generation)
    events.post(body, events.for_run(summary))
    for alert in alerts.for_run(summary) + alerts.for_backlog(loop.backlog, outcome.backlog):
        shared.alert(alert)
    loop.backlog = dict(outcome.backlog)


@kopf.daemon(*resources.CREDITSYNCS, id="converge", cancellation_timeout=CANCELLATION_TIMEOUT)
async def converge(
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, memo: kopf.Memo,
    stopped: kopf.DaemonStopped, **_: Any,
) -> None:
    """Converge this CreditSync whenever `schedule.decide` says so, until stopped."""
    shared = state.shared(memo)
    loop = state.loop_state(memo)  # in the object's memo: a restarted daemon continues it
    uid = str(meta.get("uid"))
    inbox_due = time.monotonic() + INBOX_EVERY
    while not stopped:
        shared.beat(uid)
        parsed = parse(spec)  # `spec` and `meta` are live views of the object
        now = time.monotonic()
        decision = schedule.decide(loop, parsed, generation=meta.get("generation"),
                                   plan_generation=shared.plan_generation, now=now)
        if decision is not None:
            await act(shared, loop, body, decision)
            inbox_due = time.monotonic() + INBOX_EVERY
        elif (isinstance(parsed, specs.SyncSpec) and not parsed.suspend and not parsed.dry_run
                and loop.retry_trigger is None and now >= inbox_due):
            await _frequent(shared)
            inbox_due = time.monotonic() + INBOX_EVERY
        await stopped.wait(POLL)
