"""Dependencies routes declare with `Annotated`: app state, the clock, and who is calling.

Instance tokens come from `Authorization: Bearer` or `?instance=`; the admin token only from
`Authorization: Bearer` and is compared in constant time. The app-backend routes
(`/api/instances/…`, `/api/reservations/…`) take a service key (`Bearer csk_…`, app-wide)
or an instance token (its own instance only), and require a scope (`authorized`). Every
dependency here is `async def`: FastAPI would run a plain `def` one in a worker thread, a hop
per request (a service key's lookup is the one hop, to read the database).
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, Path, Query, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from creditsync import clock, config, enums, ingest, keys, marketplace
from creditsync_api import errors, metrics, schemas, tokens

Before = Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                     description="`nextBefore` of the previous page.")]


@dataclass
class State:
    """What every request shares; the engine is set by the app's lifespan."""

    settings: config.Settings
    wix_key: rsa.RSAPublicKey
    metrics: metrics.Metrics
    engine: Engine | None = None
    ingress: ingest.Ingress | None = None  # the webhook's ingest service
    marketplace: marketplace.Client | None = None  # the second source (None: off)


def state_of(request: Request) -> State:
    state: State = request.app.state.creditsync
    return state


async def get_state(request: Request) -> State:
    return state_of(request)


StateDep = Annotated[State, Depends(get_state)]


def require_engine(state: State) -> Engine:
    if state.engine is None:
        raise RuntimeError("the app's lifespan has not run: serve it with uvicorn or "
                           "`with TestClient(app)`")
    return state.engine


async def get_engine(request: Request) -> Engine:
    return require_engine(state_of(request))


EngineDep = Annotated[Engine, Depends(get_engine)]


async def get_metrics(request: Request) -> metrics.Metrics:
    return state_of(request).metrics


MetricsDep = Annotated[metrics.Metrics, Depends(get_metrics)]


async def get_now() -> dt.datetime:
    """The request's clock (tests override it with `app.dependency_overrides`)."""
    return clock.utcnow()


NowDep = Annotated[dt.datetime, Depends(get_now)]

_instance_bearer = HTTPBearer(
    auto_error=False, scheme_name="instanceToken",
    description="The instance token the marketplace gives the app (`<signature>.<payload>`).")
_instance_query = APIKeyQuery(
    name="instance", auto_error=False, scheme_name="instanceQuery",
    description="The same instance token as the `instance` query parameter (dashboard iframe).")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="adminToken",
                           description="`CREDITSYNC_ADMIN_TOKEN`.")

_BEARER = {"WWW-Authenticate": "Bearer"}


async def get_instance(
    request: Request,
    now: NowDep,
    header: Annotated[HTTPAuthorizationCredentials | None, Depends(_instance_bearer)],
    query: Annotated[str | None, Depends(_instance_query)],
) -> tokens.InstanceToken:
    """The verified caller; the instance id is never taken from anything else."""
    raw = header.credentials if header is not None else query
    state = state_of(request)
    if not raw:
        state.metrics.token_failures.labels("missing_token").inc()
        raise errors.ApiError(401, "missing_token",
                              "no instance token: send `Authorization: Bearer <instance>` or "
                              "`?instance=<instance>` as the marketplace issued it",
                              headers=_BEARER)
    secret = state.settings.app_secret
    assert secret is not None  # create_app requires it
    try:
        return tokens.verify(raw, secret.get_secret_value(), now=now,
                             max_age=state.settings.instance_token_max_age)
    except tokens.TokenError as exc:
        state.metrics.token_failures.labels(exc.code).inc()
        raise errors.ApiError(401, exc.code, exc.message, headers=_BEARER) from exc


InstanceDep = Annotated[tokens.InstanceToken, Depends(get_instance)]


async def require_admin(
    request: Request,
    header: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    expected = state_of(request).settings.admin_token
    assert expected is not None  # create_app requires it
    if header is None:
        raise errors.ApiError(401, "missing_admin_token",
                              "send `Authorization: Bearer $CREDITSYNC_ADMIN_TOKEN`",
                              headers=_BEARER)
    if not hmac.compare_digest(header.credentials.encode(),
                               expected.get_secret_value().encode()):
        raise errors.ApiError(401, "bad_admin_token",
                              "the bearer token is not CREDITSYNC_ADMIN_TOKEN", headers=_BEARER)


_backend_bearer = HTTPBearer(
    auto_error=False, scheme_name="serviceKey",
    description="A service key (`csk_<id>_<secret>`, from `creditsync keys create`), or the "
                "instance's own token.")

InstanceIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=schemas.NO_NUL,
                                     description="The instance id.")]


@dataclass(frozen=True)
class Caller:
    """Who calls an app-backend route: a service key (app-wide: `instance_id` None) or an
    instance token (that instance only)."""

    scopes: frozenset[enums.Scope]
    key_id: str | None = None
    instance_id: str | None = None

    def check_instance(self, instance_id: str) -> None:
        """403 unless the caller may act on `instance_id`."""
        if self.instance_id is not None and self.instance_id != instance_id:
            raise errors.ApiError(403, "wrong_instance",
                                  "an instance token acts on its own instance only: use a "
                                  "service key for other instances")


async def _caller(request: Request, now: dt.datetime, raw: str | None,
                  scope: enums.Scope) -> Caller:
    state = state_of(request)
    if not raw:
        raise errors.ApiError(401, "missing_credentials",
                              "send `Authorization: Bearer csk_…` (a service key) or the "
                              "instance token", headers=_BEARER)
    if keys.looks_like_key(raw):
        engine = require_engine(state)
        try:
            found = await anyio.to_thread.run_sync(
                functools.partial(keys.authenticate, engine, raw, now=now))
        except keys.BadKey as exc:
            state.metrics.key_failures.labels(exc.code).inc()
            raise errors.ApiError(401, exc.code, exc.message, headers=_BEARER) from exc
        caller = Caller(found.scopes, key_id=found.id)
    else:
        secret = state.settings.app_secret
        assert secret is not None  # create_app requires it
        try:
            token = tokens.verify(raw, secret.get_secret_value(), now=now,
                                  max_age=state.settings.instance_token_max_age)
        except tokens.TokenError as exc:
            state.metrics.token_failures.labels(exc.code).inc()
            raise errors.ApiError(401, exc.code, exc.message, headers=_BEARER) from exc
        caller = Caller(enums.INSTANCE_TOKEN_SCOPES, instance_id=token.instance_id)
    if scope not in caller.scopes:
        have = ", ".join(sorted(caller.scopes)) or "none"
        raise errors.ApiError(403, "missing_scope",
                              f"this route needs the scope {scope}; the key has {have}: "
                              f"create a key with `--scopes {scope}`")
    return caller


def authorized(scope: enums.Scope) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, authenticated, holding `scope`."""

    async def dependency(
        request: Request, now: NowDep,
        header: Annotated[HTTPAuthorizationCredentials | None, Depends(_backend_bearer)],
    ) -> Caller:
        return await _caller(request, now, header.credentials if header else None, scope)

    return dependency


def authorized_for_instance(scope: enums.Scope) -> Callable[..., Awaitable[Caller]]:
    """`authorized`, and allowed to act on the path's `instance_id` (403 otherwise)."""

    async def dependency(
        request: Request, now: NowDep, instance_id: InstanceIdPath,
        header: Annotated[HTTPAuthorizationCredentials | None, Depends(_backend_bearer)],
    ) -> Caller:
        caller = await _caller(request, now, header.credentials if header else None, scope)
        caller.check_instance(instance_id)
        return caller

    return dependency


ReaderDep = Annotated[Caller, Depends(authorized_for_instance(enums.Scope.CREDITS_READ))]
SpenderDep = Annotated[Caller, Depends(authorized_for_instance(enums.Scope.CREDITS_CONSUME))]
SettlerDep = Annotated[Caller, Depends(authorized(enums.Scope.CREDITS_CONSUME))]
GranterDep = Annotated[Caller, Depends(authorized_for_instance(enums.Scope.CREDITS_GRANT))]
