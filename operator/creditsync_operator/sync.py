"""`CreditSync` handler: converge at start-up, every `spec.interval`, and after plan changes.

One kopf timer per CreditSync. Each call waits, polling the live spec in memory, until
`schedule.decide` says it is time; then it runs one guarded convergence (lock, due inbox
retries, set-based repair) on kopf's thread pool and returns, and kopf applies the status
patch: conditions `Ready`/`Converged`/`Degraded`, `instances`, `drifted`, `lastSyncTime`,
`lastRun`, `webhookBacklog`, `observedGeneration`. While waiting it also retries due inbox
events every few seconds. A failed run marks the resource `Degraded` with the error and
raises `TemporaryError` with a growing backoff; the first good run clears it. Repairs
become one aggregated Event per run; drift, webhook trouble and Degraded send alerts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from creditsync import alerts, clock, convergence, inbox, policy_store, runner
from creditsync_operator import conditions, events, resources, schedule, specs, state, status
from creditsync_operator.conditions import Condition

log = logging.getLogger("creditsync.operator.sync")

POLL = 0.5  # how often a waiting loop looks at its spec and the catalog change counter
INBOX_EVERY = 5.0  # due inbox retries between runs


@dataclass(frozen=True)
class Outcome:
    """One run: None when another runner held the convergence lock."""

    summary: convergence.Summary | None
    backlog: dict[str, int] = field(default_factory=dict)


def store_policy(shared: state.Shared, spec: specs.SyncSpec, source: str) -> None:
    """Make the spec's policy the one every process converges with (webhooks included)."""
    if policy_store.store(shared.engine, spec.pol, source, clock.utcnow()):
        log.info("policy from %s: usageOnPlanChange %s, expiryGracePeriod %ss", source,
                 spec.pol.usage_on_plan_change, int(spec.pol.expiry_grace_period.total_seconds()),
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
    shared.refresh_counts()
    return Outcome(summary, backlog)


def _parse(spec: kopf.Spec) -> specs.SyncSpec | specs.SpecError:
    try:
        return specs.parse_sync(spec)
    except specs.SpecError as exc:
        return exc


async def _retry_inbox(shared: state.Shared, spec: specs.SyncSpec) -> None:
    try:
        await state.blocking(shared.executor, runner.retry_inbox, shared.engine)
    except Exception as exc:  # the next run reports the database's state
        log.debug("inbox retry failed: %s", status.describe_error(exc))


async def _turn(
    shared: state.Shared, loop: schedule.LoopState, spec: kopf.Spec, meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
) -> schedule.Decision | None:
    """Wait until it is time to act; None when the operator or the resource goes away."""
    uid = str(meta.get("uid"))
    inbox_due = time.monotonic() + INBOX_EVERY
    while not stopped:
        shared.beat(uid)
        parsed = _parse(spec)
        now = time.monotonic()
        decision = schedule.decide(loop, parsed, generation=meta.get("generation"),
                                   plan_generation=shared.plan_generation, now=now)
        if decision is not None:
            return decision
        if (isinstance(parsed, specs.SyncSpec) and not parsed.suspend and not parsed.dry_run
                and loop.retry_trigger is None and now >= inbox_due):
            await _retry_inbox(shared, parsed)
            inbox_due = time.monotonic() + INBOX_EVERY
        await stopped.wait(POLL)
    return None


def _where(meta: kopf.Meta) -> str:
    return f"CreditSync {meta.get('namespace')}/{meta.get('name')}"


def _report(
    shared: state.Shared, loop: schedule.LoopState, body: kopf.Body, patch: kopf.Patch,
    updates: list[Condition], generation: int | None,
) -> None:
    """Write `updates`; on entering or leaving Degraded, post an Event and alert."""
    patch.fns.append(conditions.patch_fn(updates, generation=generation,
                                         now=clock.utcnow()))
    patch.status["observedGeneration"] = generation
    cond = status.degraded(updates)
    if cond is None:
        return
    if loop.degraded is None:  # first report since start: continue from the status
        old = conditions.get(body.status.get("conditions"), conditions.DEGRADED)
        loop.degraded = str(old.get("reason")) if old and old.get("status") == "True" else ""
    was, now = loop.degraded, cond.reason if cond.status == "True" else ""
    loop.degraded = now
    where = _where(body.metadata)
    if now and now != was:
        kopf.event(body, type="Warning", reason="Degraded", message=f"{now}: {cond.message}")
        shared.alert(alerts.degraded(where, now, cond.message))
    elif was and not now:
        kopf.event(body, type="Normal", reason="Recovered", message=f"no longer {was}")
        shared.alert(alerts.recovered(where, f"No longer {was}: the last run succeeded."))


@kopf.timer(*resources.CREDITSYNCS, id="converge", interval=POLL)
async def converge(
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, memo: kopf.Memo, patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Wait for this CreditSync's next turn, act on it, and report."""
    stopped: kopf.DaemonStopped = kwargs["stopped"]  # kopf's TimerFn leaves it to **kwargs
    shared = state.shared(memo)
    loop = state.loop_state(memo)
    decision = await _turn(shared, loop, spec, meta, stopped)
    if decision is None:
        return
    generation = meta.get("generation")
    if decision.kind == "invalid":
        schedule.reported(loop, "invalid", generation)
        kopf.event(body, type="Warning", reason=status.INVALID_SPEC, message=decision.error)
        _report(shared, loop, body, patch, status.invalid_conditions(decision.error), generation)
        return
    if decision.kind == "suspended" or decision.spec is None:
        schedule.reported(loop, "suspended", generation)
        kopf.event(body, type="Normal", reason=status.SUSPENDED, message="convergence suspended")
        _report(shared, loop, body, patch, status.suspended_conditions(), generation)
        return

    schedule.started(loop, generation=generation, plan_generation=shared.plan_generation,
                     now=time.monotonic())
    try:
        outcome = await state.blocking(
            shared.executor, run_once, shared, decision.spec, decision.trigger,
            policy_store.creditsync_source(meta.get("namespace"), meta.get("name")))
    except Exception as exc:
        delay = schedule.failed(loop, decision.trigger, time.monotonic())
        reason, message = status.error_reason(exc), status.describe_error(exc)
        _report(shared, loop, body, patch, status.error_conditions(reason, message, delay),
                generation)
        raise kopf.TemporaryError(f"{reason}: {message}", delay=delay) from exc
    summary = outcome.summary
    if summary is None:
        schedule.skipped(loop, decision.trigger, time.monotonic())
        return
    schedule.succeeded(loop)
    fields = status.for_run(summary, outcome.backlog, generation=generation,
                            now=clock.utcnow())
    for key, value in fields.items():
        patch.status[key] = value
    _report(shared, loop, body, patch, status.run_conditions(summary), generation)
    events.post(body, events.for_run(summary))
    for alert in alerts.for_run(summary) + alerts.for_backlog(loop.backlog, outcome.backlog):
        shared.alert(alert)
    loop.backlog = dict(outcome.backlog)
