"""`POST /api/provision`: the install flow creates the instance and converges it at once."""

from __future__ import annotations

from fastapi import APIRouter

from creditsync import instances
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, InstanceDep, NowDep, StateDep

router = APIRouter(tags=["instances"])


@router.post("/api/provision", summary="Provision the calling instance",
             response_model=schemas.Credits, responses=errors.responses(401, 503))
def provision(
    caller: InstanceDep, state: StateDep, engine: EngineDep, now: NowDep
) -> schemas.Credits:
    """Create the instance on the default plan if it is new, then converge it: a purchase
    that arrived before the install is applied here. Idempotent; answers its credits."""
    summary = instances.provision(engine, caller.instance_id, now=now)
    state.metrics.repairs.labels("provision").inc(summary.repaired)
    return schemas.Credits.from_core(
        instances.credits(engine, caller.instance_id, now=now))
