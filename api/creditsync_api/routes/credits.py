"""`POST /api/credits/consume`: charge credits atomically and exactly once per key."""

from __future__ import annotations

from fastapi import APIRouter

from creditsync import usage
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, InstanceDep, NowDep, PolicyDep, StateDep

router = APIRouter(prefix="/api/credits", tags=["credits"])


@router.post("/consume", summary="Consume credits",
             response_model=schemas.Consumption,
             responses=errors.responses(400, 401, 404, 402, 503,
                                        s402=schemas.InsufficientCreditsBody))
def consume(
    body: schemas.ConsumeRequest, caller: InstanceDep, state: StateDep, engine: EngineDep,
    pol: PolicyDep, now: NowDep,
) -> schemas.Consumption:
    """Plan credits first, then bonus. A retry with the same `idempotencyKey` is charged
    once and answered as the first time (`replayed: true`). 402 with `creditsRemaining`
    when short."""
    try:
        result = usage.consume(engine, caller.instance_id, body.amount, body.idempotency_key,
                               now=now, pol=pol)
    except usage.InsufficientCredits as exc:
        state.metrics.consume.labels("insufficient").inc()
        raise errors.ApiError(402, "insufficient_credits", str(exc),
                              extra={"creditsRemaining": exc.remaining,
                                     "requested": exc.requested}) from exc
    except ValueError as exc:
        state.metrics.consume.labels("invalid").inc()
        raise errors.ApiError(400, "invalid_consumption", str(exc)) from exc
    state.metrics.consume.labels("replayed" if result.replayed else "consumed").inc()
    return schemas.Consumption.from_core(result)
