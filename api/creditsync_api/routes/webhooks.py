"""`POST /api/webhooks/billing`: verified marketplace events into the inbox, applied at once.

The event is committed to the inbox before anything is acknowledged; then it is applied
(subscription updated, instance converged) within what is left of a 0.8 s budget, so
the marketplace's 1.25 s limit is never hit. An apply that fails or runs over leaves the
event `pending` for the retry loop, and the answer is still 200: it is stored. An event not
stored within the budget is answered 503: the marketplace retries, and finds it as a
duplicate if the store did commit after all.

On PostgreSQL both steps run on the event loop (`creditsync.inbox_pg`: one pooled
connection, three round trips); on SQLite the core's blocking `inbox.store` and
`inbox.process` run in worker threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time

import anyio
from fastapi import APIRouter, Request, Response
from sqlalchemy.engine import Engine

from creditsync import enums, inbox
from creditsync.storage import inbox_pg
from creditsync_api import errors, schemas, wix
from creditsync_api.deps import EngineDep, NowDep, State, StateDep

router = APIRouter(tags=["webhooks"])

PATH = "/api/webhooks/billing"
MAX_BODY = 64 * 1024  # enforced before the body is read, by `limits.BodyLimit` (see main)
BUDGET_S = 0.8  # seconds to store and apply; the marketplace waits 1.25 s in all

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
    try:
        if state.pg_pool is not None:
            receipt, status = await _ingest_async(state, incoming, now)
        else:
            receipt, status = await _ingest_in_threads(state, engine, incoming, now)
    except Exception as exc:
        if errors.is_unavailable(exc):
            metrics.webhook(incoming.event_type, "unavailable")
        raise
    metrics.apply_seconds.observe(time.perf_counter() - started)
    metrics.webhook(incoming.event_type, status)
    # the answer is built by hand: it is `schemas.WebhookAck` (the documented model), and
    # validating it again per request costs the marketplace's busiest endpoint
    return Response(json.dumps({"status": status, "eventId": receipt.event_id},
                               separators=(",", ":")), media_type="application/json")


async def _ingest_async(
    state: State, incoming: inbox.Incoming, now: dt.datetime
) -> tuple[inbox.Receipt, str]:
    """PostgreSQL: store and apply on the event loop, one connection (`inbox_pg.ingest`)."""
    assert state.pg_pool is not None
    deadline = time.monotonic() + BUDGET_S
    stored: asyncio.Future[inbox.Receipt] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(inbox_pg.ingest(state.pg_pool, incoming, now=now,
                                                 on_stored=stored.set_result))
    state.background.add(task)
    task.add_done_callback(state.background.discard)
    await asyncio.wait({stored, task}, timeout=BUDGET_S, return_when=asyncio.FIRST_COMPLETED)
    if not stored.done():
        if task.done():
            task.result()  # raises what kept the event from being stored (e.g. 503)
        task.cancel()  # not stored in time: not acknowledged, the marketplace retries
        raise errors.unavailable_error()
    receipt = stored.result()
    if receipt.status != enums.EventStatus.PENDING:
        return receipt, receipt.status
    # past the budget the apply goes on in the background; the event is already stored
    done, _ = await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0))
    return receipt, task.result().status if done else enums.EventStatus.PENDING


async def _ingest_in_threads(
    state: State, engine: Engine, incoming: inbox.Incoming, now: dt.datetime
) -> tuple[inbox.Receipt, str]:
    """SQLite: the core's blocking store and apply, in worker threads."""
    deadline = anyio.current_time() + BUDGET_S
    receipt: inbox.Receipt | None = None
    with anyio.move_on_after(BUDGET_S):
        receipt = await anyio.to_thread.run_sync(
            inbox.store, engine, incoming, now, limiter=state.db_threads,
            abandon_on_cancel=True)
    if receipt is None:  # not stored in time: not acknowledged, the marketplace retries
        raise errors.unavailable_error()
    status = receipt.status
    if status == enums.EventStatus.PENDING:
        apply = functools.partial(inbox.process, engine, receipt.event_id, now=now)
        with anyio.move_on_after(deadline - anyio.current_time()):
            status = await anyio.to_thread.run_sync(apply, limiter=state.db_threads,
                                                    abandon_on_cancel=True)
    return receipt, status
