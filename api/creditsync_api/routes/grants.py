"""`/api/admin/instances/{id}/grants`: list an instance's grants, grant credits, void one.

Thin over `creditsync.grants`; an app-facing route family (a service key with scope
`credits:grant`) calls the same `grants.create` with `source=app`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.engine import Engine

from creditsync import enums, grants
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, NowDep, require_admin
from creditsync_api.routes.admin import InstanceId

router = APIRouter(prefix="/api/admin/instances/{instance_id}/grants", tags=["admin"],
                   dependencies=[Depends(require_admin)])

GrantId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$",
                              description="The grant id (`grt_…`).")]


def listing(engine: Engine, instance_id: str) -> schemas.GrantList:
    """The answer of both route families' `GET …/grants`."""
    return schemas.GrantList(grants=[schemas.Grant.from_core(g)
                                     for g in grants.listing(engine, instance_id)])


def grant(engine: Engine, instance_id: str, body: schemas.GrantRequest, now: dt.datetime,
          who: str) -> schemas.GrantResult:
    """The answer of both route families' `POST …/grants`; `who` is the source and actor
    (`admin`, `app`)."""
    made = grants.create(engine, instance_id, body.amount, reason=body.reason, now=now,
                         priority=body.priority, expires_at=body.expires_at,
                         idempotency_key=body.idempotency_key, source=who, actor=who)
    return schemas.GrantResult(**schemas.Grant.from_core(made.grant).model_dump(),
                               replayed=made.replayed)


def void(engine: Engine, instance_id: str, grant_id: str, body: schemas.VoidRequest | None,
         now: dt.datetime, who: str) -> schemas.Grant:
    """The answer of both route families' `POST …/grants/{grantId}/void`."""
    ended = grants.void(engine, instance_id, grant_id, now=now,
                        reason=body.reason if body else None, actor=who)
    return schemas.Grant.from_core(ended.grant)


@router.get("", summary="An instance's grants", response_model=schemas.GrantList,
            responses=errors.responses(401, 404, 503))
def list_grants(instance_id: InstanceId, engine: EngineDep) -> schemas.GrantList:
    """Live grants in spending order with what is left, then the newest ended ones."""
    return listing(engine, instance_id)


@router.post("", summary="Grant credits", response_model=schemas.GrantResult,
             responses=errors.responses(400, 401, 404, 409, 503))
def create_grant(
    instance_id: InstanceId, body: schemas.GrantRequest, engine: EngineDep, now: NowDep,
) -> schemas.GrantResult:
    """Credits spent after the plan credits, by priority, then soonest expiry; the grant and
    its reason go into the ledger (kind `grant`)."""
    return grant(engine, instance_id, body, now, enums.Actor.ADMIN)


@router.post("/{grant_id}/void", summary="Void a grant", response_model=schemas.Grant,
             responses=errors.responses(400, 401, 404, 409, 503))
def void_grant(
    instance_id: InstanceId, grant_id: GrantId, engine: EngineDep, now: NowDep,
    body: schemas.VoidRequest | None = None,
) -> schemas.Grant:
    """The grant's remainder leaves (ledger kind `grant_voided`); 409 unless it is live."""
    return void(engine, instance_id, grant_id, body, now, enums.Actor.ADMIN)
