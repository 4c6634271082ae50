"""`POST /api/credits/consume`: charge credits atomically and exactly once per key."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from sqlalchemy.engine import Engine

from creditsync import errors as core_errors
from creditsync import usage
from creditsync_api import deps, errors, schemas
from creditsync_api.deps import EngineDep, InstanceDep, NowDep, StateDep

router = APIRouter(prefix="/api/credits", tags=["credits"])

_OUTCOMES = {"insufficient_credits": "insufficient", "invalid_consumption": "invalid",
             "idempotency_key_reused": "conflict"}


@router.post("/consume", summary="Consume credits",
             response_model=schemas.Consumption,
             responses=errors.responses(400, 401, 404, 402, 409, 503,
                                        s402=schemas.InsufficientCreditsBody))
def consume(
    body: schemas.ConsumeRequest, caller: InstanceDep, state: StateDep, engine: EngineDep,
    now: NowDep,
) -> schemas.Consumption:
    """Plan credits first, then bonus. A retry with the same `idempotencyKey` is charged
    once and answered as the first time (`replayed: true`); the same key with another
    `amount` is 409 `idempotency_key_reused` (naming the first amount). 402 with
    `creditsRemaining` when short."""
    return charge(state, engine, caller.instance_id, body, now)


def charge(
    state: deps.State, engine: Engine, instance_id: str, body: schemas.ConsumeRequest,
    now: dt.datetime,
) -> schemas.Consumption:
    """A consume for `instance_id`, counted by outcome (this route's and the app
    backend's)."""
    try:
        result = usage.consume(engine, instance_id, body.amount, body.idempotency_key,
                               now=now)
    except core_errors.CreditsyncError as exc:  # answered by the one error mapping
        state.metrics.consume.labels(_OUTCOMES.get(exc.code, "error")).inc()
        raise
    state.metrics.consume.labels("replayed" if result.replayed else "consumed").inc()
    return schemas.Consumption.from_core(result)
