"""`/api/instances/{instanceId}/*`: the app backend's credit routes, keyed by instance id.

For a service key with the route's scope (app-wide), or the instance's own token; another
instance's token is 403, an instance never provisioned 404.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from creditsync import enums, instances, reservations
from creditsync_api import deps, errors, schemas
from creditsync_api.deps import (
    EngineDep,
    GranterDep,
    InstanceIdPath,
    NowDep,
    ReaderDep,
    SpenderDep,
    StateDep,
)
from creditsync_api.routes import credits
from creditsync_api.routes import grants as grant_routes
from creditsync_api.routes import reservations as reservation_routes
from creditsync_api.routes.grants import GrantId

router = APIRouter(prefix="/api/instances", tags=["app backend"])


@router.get("/{instance_id}/credits", summary="An instance's credits",
            response_model=schemas.Credits, responses=errors.responses(401, 403, 404, 503))
def get_credits(
    instance_id: InstanceIdPath, _caller: ReaderDep, engine: EngineDep, now: NowDep,
) -> schemas.Credits:
    """Scope `credits:read`. `creditsRemaining` is what can still be spent (holds
    subtracted); reads never converge."""
    return schemas.Credits.from_core(instances.credits(engine, instance_id, now=now))


@router.post("/{instance_id}/consume", summary="Consume an instance's credits",
             response_model=schemas.Consumption,
             responses=errors.responses(400, 401, 402, 403, 404, 409, 503,
                                        s402=schemas.InsufficientCreditsBody))
def consume(
    instance_id: InstanceIdPath, body: schemas.ConsumeRequest, _caller: SpenderDep,
    state: StateDep, engine: EngineDep, now: NowDep,
) -> schemas.Consumption:
    """Scope `credits:consume`; as `POST /api/credits/consume`: charged once per
    `idempotencyKey` (a retry answers the first result, `replayed: true`), 409 when the key
    comes back with another `amount`, 402 with `creditsRemaining` when short."""
    return credits.charge(state, engine, instance_id, body, now)


@router.get("/{instance_id}/history", summary="An instance's credit history",
            response_model=schemas.HistoryPage,
            responses=errors.responses(401, 403, 404, 503))
def history(
    instance_id: InstanceIdPath, _caller: ReaderDep, engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Entries per page.")] = 50,
    before: deps.Before = None,
) -> schemas.HistoryPage:
    """Scope `credits:read`. Ledger rows, newest first."""
    entries = instances.history(engine, instance_id, limit=limit, before_id=before,
                                require=True)
    return schemas.HistoryPage.from_core(entries, limit)


@router.post("/{instance_id}/reservations", summary="Hold credits for a job",
             response_model=schemas.Reservation,
             responses=errors.responses(400, 401, 402, 403, 404, 409, 503,
                                        s402=schemas.InsufficientCreditsBody))
def reserve(
    instance_id: InstanceIdPath, body: schemas.ReserveRequest, _caller: SpenderDep,
    state: StateDep, engine: EngineDep, now: NowDep,
) -> schemas.Reservation:
    """Scope `credits:consume`. Holds `amount` atomically (402 when short): nobody can
    spend them until `POST /api/reservations/{id}/commit` or `/release`, or `ttl` seconds
    pass. The same `idempotencyKey` answers the first hold (`replayed`); with another
    amount, 409."""
    return reservation_routes.counted(state, "reserve", "held", lambda: reservations.reserve(
        engine, instance_id, body.amount, body.idempotency_key,
        ttl=dt.timedelta(seconds=body.ttl), now=now))


@router.get("/{instance_id}/grants", summary="An instance's grants",
            response_model=schemas.GrantList, responses=errors.responses(401, 403, 404, 503))
def list_grants(
    instance_id: InstanceIdPath, _caller: ReaderDep, engine: EngineDep,
) -> schemas.GrantList:
    """Scope `credits:read`. Live grants in spending order with what is left, then the
    newest ended ones."""
    return grant_routes.listing(engine, instance_id)


@router.post("/{instance_id}/grants", summary="Grant credits to an instance",
             response_model=schemas.GrantResult,
             responses=errors.responses(400, 401, 403, 404, 409, 503))
def create_grant(
    instance_id: InstanceIdPath, body: schemas.GrantRequest, _caller: GranterDep,
    engine: EngineDep, now: NowDep,
) -> schemas.GrantResult:
    """Scope `credits:grant` (a service key: an instance token cannot grant). As the admin
    route: spent after the plan credits by priority, then soonest expiry; the same
    `idempotencyKey` grants once (`replayed`), with other parameters 409."""
    return grant_routes.grant(engine, instance_id, body, now, enums.Actor.APP)


@router.post("/{instance_id}/grants/{grant_id}/void", summary="Void an instance's grant",
             response_model=schemas.Grant,
             responses=errors.responses(400, 401, 403, 404, 409, 503))
def void_grant(
    instance_id: InstanceIdPath, grant_id: GrantId, _caller: GranterDep, engine: EngineDep,
    now: NowDep, body: schemas.VoidRequest | None = None,
) -> schemas.Grant:
    """Scope `credits:grant`. What is left leaves (ledger kind `grant_voided`); 409 unless
    the grant is live."""
    return grant_routes.void(engine, instance_id, grant_id, body, now, enums.Actor.APP)
