"""The app factory: `create_app(settings)` builds the FastAPI sidecar.

Secrets are required up front (fail closed). The lifespan builds the engine (unless one is
passed in, which the caller then owns) and refuses to start on an outdated schema. Every
route, the pages `/billing` and `/admin` and the docs at `/docs` too, is a router under
`routes/`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from creditsync import config, factory
from creditsync_api import deps, errors, limits, metrics, wix
from creditsync_api.routes import (
    admin,
    billing,
    credits,
    docs,
    grants,
    health,
    instances,
    pages,
    plans,
    provision,
    reservations,
    vocabulary,
    webhooks,
)

POOL_SIZE = 8  # the blocking engine: admin, instance endpoints, SQLite webhooks
ASYNC_POOL_SIZE = 16  # the webhook path on PostgreSQL

ROUTERS = (webhooks.router, provision.router, billing.router, credits.router,
           instances.router, reservations.router, admin.router, grants.router, health.router,
           plans.router, vocabulary.router, pages.router, docs.router)

DESCRIPTION = """\
Keeps every app instance's credits equal to what its subscription plan pays for.

* **Webhooks**: the marketplace posts signed billing events; each is stored in the inbox
  before it is acknowledged, then applied and the instance converged.
* **Instance endpoints** take the marketplace's instance token (`Authorization: Bearer` or
  `?instance=`); an instance only ever sees or changes itself.
* **App-backend endpoints** (`/api/instances/{instanceId}/…`, `/api/reservations/…`) take a
  service key (`Authorization: Bearer csk_…`, from `creditsync keys create`) with the
  route's scope, or the instance's own token.
* **Admin endpoints** take `Authorization: Bearer $CREDITSYNC_ADMIN_TOKEN`.

Every error has the shape `{"error": "<code>", "message": "<what is wrong and what to do>"}`.
"""

TAGS = [
    {"name": "webhooks", "description": "Billing events from the marketplace."},
    {"name": "instances", "description": "The install flow."},
    {"name": "billing", "description": "The calling instance's credits."},
    {"name": "credits", "description": "Spending credits."},
    {"name": "app backend", "description": "The app's own backend: credits by instance id, "
                                           "consume, reservations (service keys)."},
    {"name": "admin", "description": "Operators: instances, inbox, bulk sync, stats."},
    {"name": "operations", "description": "Health, readiness and metrics."},
]


def create_app(settings: config.Settings, engine: Engine | None = None) -> FastAPI:
    """The API for `settings`; raises `config.ConfigError` when a secret is missing."""
    settings.require_secrets()
    assert settings.wix_public_key is not None
    made = factory.Factory(settings, pool_size=POOL_SIZE, given_engine=engine)
    state = deps.State(
        settings=settings,
        wix_key=wix.load_public_key(settings.wix_public_key.get_secret_value()),
        metrics=metrics.Metrics(lambda: deps.require_engine(state)))
    made.marketplace_client()  # a wrong marketplace set-up fails here, not at the first call

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.engine = made.engine
        try:
            await anyio.to_thread.run_sync(made.require_schema)
            state.ingress = await made.ingress(threads=POOL_SIZE, pool_size=ASYNC_POOL_SIZE)
            state.marketplace = made.marketplace_client(
                on_request=state.metrics.marketplace_request)
            yield
        finally:
            if state.ingress is not None:
                await state.ingress.close()
                state.ingress = None
            if state.marketplace is not None:
                state.marketplace.close()
                state.marketplace = None
            made.close()
            state.engine = None

    app = FastAPI(title="creditsync", summary="Credits that always match the plan.",
                  description=DESCRIPTION, version=_version(), openapi_tags=TAGS,
                  lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # FastAPI's load a CDN: routes/docs.py
    app.state.creditsync = state
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    assert settings.admin_token is not None
    # the last added runs first: sizes, then the admin token, then FastAPI reads the body
    app.add_middleware(limits.AdminGate, token=settings.admin_token.get_secret_value(),
                       on_failure=lambda reason: state.metrics.admin_auth_failures.labels(
                           reason).inc())
    app.add_middleware(limits.BodyLimit, default=limits.DEFAULT_MAX_BODY,
                       limits={webhooks.PATH: webhooks.MAX_BODY}, on_refused=_count_refusal(state))
    return app


def _count_refusal(state: deps.State) -> Callable[[str], None]:
    def count(path: str) -> None:
        if path == webhooks.PATH:  # as the route counted its own size check
            state.metrics.webhook("", "malformed")
    return count


def _version() -> str:
    try:
        return importlib.metadata.version("creditsync")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
