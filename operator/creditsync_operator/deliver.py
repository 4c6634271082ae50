"""Events to the app from the operator: a third kopf daemon per `CreditSync`.

Every `runner.DELIVER_EVERY` it delivers the outbox's due events on kopf's thread pool
(`state.blocking`), through the same `outbox.deliver_due` as `creditsync run`; the database's
delivery lock makes one deliverer among every replica and standalone runner (a held lock
is a quiet skip), so several `CreditSync`s or replicas never send an event twice at once.
With no `CREDITSYNC_APP_WEBHOOK_URL` the daemon ends at once (events wait in the outbox);
a suspended `CreditSync` pauses delivery too.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from creditsync import outbox, runner
from creditsync_operator import resources, specs, state, status, sync

log = logging.getLogger("creditsync.operator.deliver")


@kopf.daemon(*resources.CREDITSYNCS, id="deliver", cancellation_timeout=sync.CANCELLATION_TIMEOUT)
async def deliver(spec: kopf.Spec, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                  **_: Any) -> None:
    """Deliver events to the app until stopped."""
    shared = state.shared(memo)
    client = shared.deliverer
    if client is None:
        log.debug("no CREDITSYNC_APP_WEBHOOK_URL: events to the app wait in the outbox")
        return
    while not stopped:
        parsed = sync.parse(spec)  # `spec` is a live view of the object
        if not (isinstance(parsed, specs.SyncSpec) and parsed.suspend):
            try:
                await state.blocking(shared.executor, outbox.deliver_due, shared.engine, client)
            except Exception as exc:  # the database: the convergence loop reports it
                log.warning("delivering events to the app failed: %s; retrying",
                            status.describe_error(exc))
        await stopped.wait(runner.DELIVER_EVERY.total_seconds())
