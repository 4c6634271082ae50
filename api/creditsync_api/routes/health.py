"""Operations: `/healthz` (the process answers), `/readyz` (it can serve), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from creditsync import catalog
from creditsync.storage import schema
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, StateDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", response_model=schemas.Health,
            responses=errors.responses())
async def healthz() -> schemas.Health:
    """The process is up (it does not touch the database)."""
    return schemas.Health(status="ok")


@router.get("/readyz", summary="Readiness", response_model=schemas.Health,
            responses=errors.responses(503))
def readyz(engine: EngineDep) -> schemas.Health:
    """The database is reachable, its schema is this version's, and the plan catalog is
    loaded; 503 with `error` saying which is not."""
    schema.require_current(engine)
    catalog.require(engine)
    return schemas.Health(status="ready")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format."},
                       **errors.responses()})
def metrics(state: StateDep) -> Response:
    """Webhooks by type and outcome, signature failures, apply latency, sync runs,
    repairs, drifted instances, inbox backlog, consume outcomes."""
    return Response(generate_latest(state.metrics.exposition()), media_type=CONTENT_TYPE_LATEST)
