"""`POST /api/provision`: the install flow creates the instance and converges it at once."""

from __future__ import annotations

from fastapi import APIRouter

from creditsync import audit, instances
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, InstanceDep, NowDep, StateDep

router = APIRouter(tags=["instances"])


@router.post("/api/provision", summary="Provision the calling instance",
             response_model=schemas.Credits, responses=errors.responses(401, 503))
def provision(
    caller: InstanceDep, state: StateDep, engine: EngineDep, now: NowDep
) -> schemas.Credits:
    """Create the instance on the default plan if it is new, then converge it: a purchase
    that arrived before the install is applied here, and with the marketplace source on
    (`CREDITSYNC_WIX_APP_ID`) the marketplace is asked what the site pays for, so a purchase
    whose webhook never came is in place at once (if it does not answer, provisioning goes
    on and the instance is first in line for the next audit). Idempotent; answers its
    credits."""
    summary = instances.provision(engine, caller.instance_id, now=now)
    state.metrics.repairs.labels("provision").inc(summary.repaired)
    if state.marketplace is not None:
        found, _error = audit.ask(engine, state.marketplace, caller.instance_id)
        if found is not None:
            state.metrics.disagreements.labels(found.action.value).inc()
    return schemas.Credits.from_core(
        instances.credits(engine, caller.instance_id, now=now))
