"""`/api/billing/*`: the calling instance's credits, its grants, its manual sync, and its
history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from creditsync import grants, instances, manual
from creditsync_api import deps, errors, schemas
from creditsync_api.deps import EngineDep, InstanceDep, NowDep, StateDep

router = APIRouter(prefix="/api/billing", tags=["billing"])


@router.get("/credits", summary="The calling instance's credits",
            response_model=schemas.Credits, responses=errors.responses(401, 404, 503))
def credits(
    caller: InstanceDep, engine: EngineDep, now: NowDep
) -> schemas.Credits:
    """Reads only: `inSync` says whether the credits equal what the plan pays for now;
    nothing is repaired (use sync-credits)."""
    return schemas.Credits.from_core(
        instances.credits(engine, caller.instance_id, now=now))


@router.get("/grants", summary="The calling instance's grants",
            response_model=schemas.GrantList, responses=errors.responses(401, 404, 503))
def list_grants(caller: InstanceDep, engine: EngineDep) -> schemas.GrantList:
    """Credits beside the plan (support's grants, rolled-over plan credits): live ones in
    the order they are spent, with what is left and when it expires, then the ended ones."""
    return schemas.GrantList(grants=[schemas.Grant.from_core(g)
                                     for g in grants.listing(engine, caller.instance_id)])


@router.post("/sync-credits", summary="Converge the calling instance now",
             response_model=schemas.SyncCreditsResult,
             responses=errors.responses(401, 404, 429, 503))
def sync_credits(
    caller: InstanceDep, state: StateDep, engine: EngineDep, now: NowDep
) -> schemas.SyncCreditsResult:
    """The "Sync Credits" button: with the marketplace source on, ask the marketplace what
    the site pays for first (`marketplace` says when that changed the plan); then repair the
    instance's credits if they differ from its plan, and answer the credits before and
    after with the list of changes. At most one call per instance every 5 seconds (429 with
    `Retry-After`)."""
    resync = manual.sync_instance(engine, caller.instance_id, now=now,
                                  client=state.marketplace)
    state.metrics.observe_run(resync.summary)
    if resync.marketplace is not None:
        state.metrics.disagreements.labels(resync.marketplace.action.value).inc()
    return schemas.SyncCreditsResult.from_core(resync)


@router.get("/history", summary="The calling instance's credit history",
            response_model=schemas.HistoryPage, responses=errors.responses(401, 503))
def history(
    caller: InstanceDep, engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Entries per page.")] = 50,
    before: deps.Before = None,
) -> schemas.HistoryPage:
    """Ledger rows, newest first: every change to the instance's numbers, who made it and
    why."""
    entries = instances.history(engine, caller.instance_id, limit=limit, before_id=before)
    return schemas.HistoryPage.from_core(entries, limit)
