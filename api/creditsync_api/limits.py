"""ASGI middleware that refuses requests before anything reads or parses their body.

`BodyLimit` answers 413 on a `Content-Length` over the route's limit before the app runs, and
counts a streamed (chunked) body as the app reads it, so no route ever buffers more than its
limit. `AdminGate` checks the admin bearer token (in constant time) before any
`/api/admin` route runs: FastAPI reads and validates a JSON body before a route's
dependencies, so without it an unauthenticated caller could have bodies parsed and answered
400/422. The router's `require_admin` dependency stays as the documented OpenAPI security.
Both answer in the API's error shape.

FastAPI's own `max_body_size` is not used: it answers a too-long `Content-Length` on a route
that never reads its body with a plain-text 413, outside the error shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from creditsync_api import errors

DEFAULT_MAX_BODY = 1024 * 1024
ADMIN_PREFIX = "/api/admin"


class BodyTooLarge(HTTPException):
    """The streamed body went past the route's limit (a 413 in the error shape)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"the body has more than {limit} bytes, the most this route accepts"


class BodyLimit:
    """At most `limits[path]` (else `default`) bytes of body per request.

    `on_refused(path)` is called for each 413 (the metrics count the webhook's)."""

    def __init__(self, app: ASGIApp, *, default: int = DEFAULT_MAX_BODY,
                 limits: Mapping[str, int] | None = None,
                 on_refused: Callable[[str], None] = lambda _path: None) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits or {})
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.on_refused(scope["path"])
            await errors.respond(413, "payload_too_large", _too_large(limit))(
                scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.on_refused(scope["path"])
                    raise BodyTooLarge(limit)  # FastAPI and the routes pass it on as a 413
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await errors.respond(413, "payload_too_large", _too_large(limit))(
                scope, receive, send)


class AdminGate:
    """`Authorization: Bearer <admin token>` on every `/api/admin` path, checked first.

    `on_failure(reason)` is called with `missing_admin_token` or `bad_admin_token` for
    each refusal (the metrics count them).
    """

    def __init__(self, app: ASGIApp, *, token: str,
                 on_failure: Callable[[str], None] = lambda _reason: None) -> None:
        self.app = app
        self.token = token.encode()
        self.on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == ADMIN_PREFIX
                                           or path.startswith(ADMIN_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        # the same reading as the router's HTTPBearer: scheme "bearer", any case
        scheme, credentials = get_authorization_scheme_param(
            Headers(scope=scope).get("authorization"))
        if scheme.lower() != "bearer" or not credentials:
            refusal = ("missing_admin_token",
                       "send `Authorization: Bearer $CREDITSYNC_ADMIN_TOKEN`")
        elif not hmac.compare_digest(credentials.encode("latin-1"), self.token):
            refusal = ("bad_admin_token", "the bearer token is not CREDITSYNC_ADMIN_TOKEN")
        else:
            await self.app(scope, receive, send)
            return
        self.on_failure(refusal[0])
        await errors.respond(401, *refusal, {"WWW-Authenticate": "Bearer"})(
            scope, receive, send)
