"""`POST /api/webhooks/billing`: verified marketplace events into the inbox, applied at once.

The route unpacks and answers: it verifies the JWT (`wix`), hands the event to the core's
ingest service (`creditsync.ingest.Ingress`: stored before anything is acknowledged, then
applied within what is left of a 0.8 s budget), counts the outcome and answers 200 with
the receipt. Not stored within the budget, or the database down: 503, and the marketplace
retries.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request, Response

from creditsync_api import errors, schemas, wix
from creditsync_api.deps import EngineDep, NowDep, StateDep

router = APIRouter(tags=["webhooks"])

PATH = "/api/webhooks/billing"
MAX_BODY = 64 * 1024  # enforced before the body is read, by `limits.BodyLimit` (see main)

_EXAMPLE_JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJkYXRhIjoie1wiZXZlbnRUeXBlXCI6XCJQYWlkUGxhblB1cmNo"
    "YXNlZFwiLFwiaW5zdGFuY2VJZFwiOlwiOWYxYzJiN2VcIixcImRhdGFcIjpcIntcXFwidmVuZG9yUHJvZHVjdElkXFw"
    "iOlxcXCJwcm9cXFwifVwifSIsImlhdCI6MTc2ODA0NjQwMCwiZXhwIjoxNzY4MDQ2NzAwfQ.c2lnbmF0dXJl")


@router.post(
    PATH,
    summary="Receive a billing webhook (Wix App Market)",
    response_model=schemas.WebhookAck,
    responses=errors.responses(400, 401, 413, 503),
    openapi_extra={"requestBody": {
        "required": True,
        "description": "The event as an RS256 JWT signed with the marketplace's key, posted "
                       "as the raw body. Claim `data` is a JSON string with `eventType`, "
                       "`instanceId` and `data` (a JSON string with the event's fields).",
        "content": {"text/plain": {"schema": {"type": "string", "maxLength": MAX_BODY,
                                              "pattern": wix.JWT_SHAPE},
                                   "example": _EXAMPLE_JWT}},
    }},
)
async def billing_webhook(
    request: Request, state: StateDep, engine: EngineDep, now: NowDep
) -> Response:
    """Store the event in the inbox (deduplicated on instance, event type,
    operationTimeStamp and product), then apply it and converge the instance.

    200 means stored: `status` says what became of it. 400: not a webhook; 401: not signed
    by the marketplace or expired (nothing stored); 503: the database is unreachable
    (nothing stored: the marketplace retries).
    """
    metrics = state.metrics
    raw = await request.body()  # at most MAX_BODY bytes: `limits.BodyLimit` refused more
    try:
        incoming = wix.parse(raw.decode("utf-8").strip(), state.wix_key, now)
    except wix.RejectedError as exc:
        metrics.signature_failures.labels(exc.code).inc()
        metrics.webhook("", "rejected")
        raise errors.ApiError(401, exc.code, exc.message) from exc
    except (wix.MalformedError, UnicodeDecodeError) as exc:
        metrics.webhook("", "malformed")
        raise errors.ApiError(400, "malformed_webhook", str(exc)) from exc

    started = time.perf_counter()
    if state.ingress is None:
        raise RuntimeError("the app's lifespan has not run: serve it with uvicorn or "
                           "`with TestClient(app)`")
    try:
        receipt = await state.ingress.receive(incoming, now)
    except Exception as exc:
        if errors.is_unavailable(exc):
            metrics.webhook(incoming.event_type, "unavailable")
        raise
    status = receipt.status
    metrics.apply_seconds.observe(time.perf_counter() - started)
    metrics.webhook(incoming.event_type, status)
    # the answer is built by hand: it is `schemas.WebhookAck` (the documented model), and
    # validating it again per request costs the marketplace's busiest endpoint
    return Response(json.dumps({"status": status, "eventId": receipt.event_id},
                               separators=(",", ":")), media_type="application/json")
