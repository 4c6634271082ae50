"""Operator start-up and shutdown: configure kopf once, build the engine, check the schema.

kopf is told to keep its state under our own names (`creditsync.io/...` annotations and
the `creditsync.io/finalizer` finalizer), to post only warnings as Events (handlers post
their own aggregated Events), to share the `creditsync` KopfPeering, and to cap its thread
pool. The database engine, the alerter and the marketplace client (when
`CREDITSYNC_WIX_APP_ID` turns the source on) and the client of events to the app (when
`CREDITSYNC_APP_WEBHOOK_URL` is set) are built once, into `memo`. An outdated schema
stops the operator with the command that fixes it; an unreachable database is retried.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from creditsync import config, factory, marketplace
from creditsync.storage import database, schema
from creditsync_operator import resources, state, status

log = logging.getLogger("creditsync.operator")

MAX_WORKERS = 8  # threads for database work
WORKER_LIMIT = 32  # objects handled concurrently
STARTUP_RETRY = 5.0
EXIT_TIMEOUT = 5.0  # a stopping daemon may still be finishing a run and writing its status


def configure(settings: kopf.OperatorSettings) -> None:
    """Our kopf settings (separate from the handler so that tests can check them)."""
    settings.persistence.finalizer = resources.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=resources.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=resources.ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.execution.max_workers = MAX_WORKERS
    settings.queueing.worker_limit = WORKER_LIMIT
    if settings.peering.name == "default":  # kopf's; `creditsync operator` passes ours
        settings.peering.name = resources.PEERING_NAME
    settings.posting.level = logging.WARNING
    settings.background.instant_exit_timeout = EXIT_TIMEOUT
    settings.posting.reporting_component = resources.COMPONENT


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    try:
        made = factory.Factory.standalone()
        alerter = made.alerter(source=resources.COMPONENT)
        client = made.marketplace_client()
        deliverer = made.app_webhooks()
    except config.ConfigError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    cfg = made.settings
    try:
        await state.blocking(settings.execution.executor, made.require_schema)
    except schema.SchemaOutdated as exc:
        _close(made, client)
        raise kopf.PermanentError(str(exc)) from exc
    except Exception as exc:
        _close(made, client)
        raise kopf.TemporaryError(
            f"cannot check the schema at {database.describe(cfg.database_url)}: "
            f"{status.describe_error(exc)}", delay=STARTUP_RETRY) from exc
    memo[state.SHARED] = state.Shared(made, settings.execution.executor, alerter,
                                      marketplace=client, deliverer=deliverer)
    log.info("operator ready on %s (peering %s, marketplace audit %s)",
             database.describe(cfg.database_url),
             "off" if settings.peering.standalone else settings.peering.name,
             "off" if client is None else f"on at {client.api_url}")


def _close(made: factory.Factory, client: marketplace.Client | None) -> None:
    if client is not None:
        client.close()
    made.close()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    found = memo.get(state.SHARED)
    if isinstance(found, state.Shared):
        if found.alerter is not None:
            found.alerter.close(timeout=5)
        _close(found.factory, found.marketplace)
        if found.deliverer is not None:
            found.deliverer.close()
