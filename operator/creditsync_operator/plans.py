"""`CreditPlan` handlers: mirror each plan into the catalog; show how many instances use it.

The plan id is the resource's name. Create, update and resume write the plan (validated
as part of the whole catalog, so a second default or a reused alias is rejected with a
`PermanentError`, a Warning Event and a `Ready=False` condition, and nothing is written);
delete removes it. Instances on a deleted plan are never downgraded: convergence leaves
them as they are and the `CreditSync` reports `Degraded`/`PlanMissing` until the plan is
back. Every catalog change makes the `CreditSync` loops converge promptly, so a changed
`monthlyCredits` reaches every instance on the plan, with ledger rows. A daemon per plan keeps
`status.instances` current.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from creditsync import catalog, clock, plans, runner
from creditsync_operator import conditions, resources, specs, state, status
from creditsync_operator.conditions import READY, Condition

log = logging.getLogger("creditsync.operator.plans")

RETRY = 5.0
POLL = 1.0  # how often the instances daemon compares the count with the status
CANCELLATION_TIMEOUT = 5.0


def _describe(change: catalog.CatalogChange) -> str:
    return "; ".join(f"{what} {', '.join(ids)}" for what, ids in (
        ("added", change.added), ("changed", change.changed), ("removed", change.removed))
        if ids)


def _after_change(shared: state.Shared) -> None:
    """Wake the CreditSync loops; with none running, converge here so the change lands."""
    shared.plan_changed()
    if shared.live_loops():
        return
    try:
        summary = runner.guarded_run(
            shared.engine, trigger="plan_change", batch_size=shared.settings.batch_size)
    except Exception as exc:  # the next loop (or the next change) converges
        log.warning("could not converge after the catalog change: %s",
                    status.describe_error(exc))
        return
    if summary is not None:
        log.info("no CreditSync is running; converged after the catalog change: %s",
                 summary.line())


@kopf.on.resume(*resources.CREDITPLANS)
@kopf.on.create(*resources.CREDITPLANS)
@kopf.on.update(*resources.CREDITPLANS)
def mirror(
    name: str, spec: kopf.Spec, meta: kopf.Meta, body: kopf.Body, memo: kopf.Memo,
    patch: kopf.Patch, **_: Any,
) -> None:
    """Write the plan into the catalog."""
    shared = state.shared(memo)
    generation = meta.get("generation")
    now = clock.utcnow()
    patch.status["observedGeneration"] = generation
    try:
        plan = specs.plan_of(name, spec)
        change = catalog.put(shared.engine, plan, now)
    except plans.CatalogError as exc:
        message = f"{exc} (the catalog keeps its previous state)"
        patch.fns.append(conditions.patch_fn(
            [Condition(READY, "False", "InvalidPlan", message)], generation=generation, now=now))
        kopf.event(body, type="Warning", reason="InvalidPlan", message=message)
        raise kopf.PermanentError(f"invalid plan: {message}") from exc
    except Exception as exc:
        raise kopf.TemporaryError(
            f"cannot write plan {name} to the catalog: {status.describe_error(exc)}",
            delay=RETRY) from exc
    patch.fns.append(conditions.patch_fn(
        [Condition(READY, "True", "InCatalog",
                   f"in the catalog: {plan.monthly_credits:,} credits a month")],
        generation=generation, now=now))
    if change.touched:
        log.info("catalog: %s", _describe(change), extra={"plan": name})
        kopf.event(body, type="Normal", reason="CatalogUpdated",
                   message=f"catalog {_describe(change)}: {plan.monthly_credits:,} credits a "
                           "month; converging the instances on it")
        _after_change(shared)


@kopf.on.delete(*resources.CREDITPLANS)
def unmirror(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Remove the plan from the catalog; its instances keep their credits."""
    shared = state.shared(memo)
    try:
        change = catalog.remove(shared.engine, name, clock.utcnow())
    except Exception as exc:
        raise kopf.TemporaryError(
            f"cannot remove plan {name} from the catalog: {status.describe_error(exc)}",
            delay=RETRY) from exc
    if change.removed:
        log.info("catalog: %s", _describe(change), extra={"plan": name})
        kopf.event(body, type="Warning", reason="CatalogUpdated",
                   message=f"plan {name} removed from the catalog; instances on it keep their "
                           "credits and are reported as PlanMissing until it is back")
        _after_change(shared)


def _patch_instances(shared: state.Shared, namespace: str, name: str, count: int) -> None:
    shared.status_api().patch_status("creditplans", namespace, name, {"instances": count})


@kopf.daemon(*resources.CREDITPLANS, id="instances", cancellation_timeout=CANCELLATION_TIMEOUT)
async def instances(
    name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo,
    stopped: kopf.DaemonStopped, **_: Any,
) -> None:
    """Keep `status.instances` equal to the number of instances on the plan, until stopped.

    A daemon, not a timer: it looks every `POLL` seconds and writes only when the count
    differs from what the (live) status shows, so a timer would log a line per look for
    nothing. Counts are shared by all plans and refreshed after every run or every half
    minute. kopf applies a daemon's `patch` only when it exits, so the write is a merge
    patch of its own (`kube`).
    """
    shared = state.shared(memo)
    while not stopped:
        if shared.counts_stale():
            try:
                await state.blocking(shared.executor, shared.refresh_counts)
            except Exception as exc:
                log.debug("cannot count instances: %s", status.describe_error(exc))
        count = shared.counts.get(name, 0)
        if body.status.get("instances") != count:
            try:
                await state.blocking(shared.executor, _patch_instances, shared,
                                     str(namespace), name, count)
            except Exception as exc:  # tried again at the next look
                log.warning("cannot write the instance count of CreditPlan %s/%s: %s",
                            namespace, name, status.describe_error(exc))
        await stopped.wait(POLL)
