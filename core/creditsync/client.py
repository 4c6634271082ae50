"""A typed Python client for an app's backend: `creditsync.client` (httpx, sync and async).

    from creditsync.client import Client, InsufficientCredits

    with Client("https://credits.example.com", key="csk_…") as credits:
        credits.consume(instance_id, 5, idempotency_key=f"render-{job.id}")
        with credits.reserve(instance_id, 50, idempotency_key=f"job-{job.id}") as hold:
            used = run(job)      # an exception releases the hold
            hold.charge(used)    # what is committed on success (default: all of it)

Transient failures (a dropped connection, a timeout, 503, 429 with `Retry-After`) are
retried with the same idempotency key, so a retry never charges twice; when retries run
out, `Unavailable` says how long to wait. Errors are exceptions: `InsufficientCredits`
(with `remaining`), `IdempotencyConflict`, `Unavailable`, and the rest of `ClientError`.
Only the standard library and httpx: nothing of the server is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

__all__ = [
    "AsyncClient", "Client", "ClientError", "Conflict", "Consumption", "Credits", "Forbidden",
    "Hold", "IdempotencyConflict", "InsufficientCredits", "InvalidRequest", "NotFound",
    "Reservation", "Unauthorized", "Unavailable",
]

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.25  # seconds; doubled on each retry
MAX_WAIT = 30.0  # a Retry-After longer than this is not waited for: `Unavailable` says it


# -- errors ----------------------------------------------------------------------------------


class ClientError(Exception):
    """An error answer (or none at all): HTTP `status` (0: no answer), the API's `code`
    and `message`."""

    def __init__(self, status: int, code: str, message: str,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status, self.code, self.message = status, code, message
        self.body = body or {}


class InsufficientCredits(ClientError):
    """402: fewer credits left than asked for; `remaining` is what can be spent."""

    @property
    def remaining(self) -> int:
        return int(self.body.get("creditsRemaining", 0))

    @property
    def requested(self) -> int:
        return int(self.body.get("requested", 0))


class IdempotencyConflict(ClientError):
    """409: the idempotency key was used before with another amount."""


class Conflict(ClientError):
    """409: e.g. committing a reservation that was released or expired."""


class Unavailable(ClientError):
    """The service could not answer (retries exhausted): retry after `retry_after`
    seconds with the same idempotency key."""

    def __init__(self, status: int, code: str, message: str,
                 body: dict[str, Any] | None = None, retry_after: float = 5.0) -> None:
        super().__init__(status, code, message, body)
        self.retry_after = retry_after


class Unauthorized(ClientError):
    """401: the key is malformed, unknown or revoked."""


class Forbidden(ClientError):
    """403: the key lacks the route's scope, or the token is another instance's."""


class NotFound(ClientError):
    """404: an instance never provisioned, or an unknown reservation."""


class InvalidRequest(ClientError):
    """400 or 422: the request is wrong (e.g. a commit larger than the hold)."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequest, 401: Unauthorized, 402: InsufficientCredits, 403: Forbidden,
    404: NotFound, 409: Conflict, 422: InvalidRequest}


# -- answers ---------------------------------------------------------------------------------


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class Credits:
    instance_id: str
    plan: str
    credits_total: int
    bonus_credits: int
    credits_used: int
    credits_remaining: int  # what can still be spent (holds subtracted)
    credits_held: int
    period_start: dt.datetime
    period_end: dt.datetime
    in_sync: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Credits:
        return cls(body["instanceId"], body["plan"], body["creditsTotal"],
                   body["bonusCredits"], body["creditsUsed"], body["creditsRemaining"],
                   body["creditsHeld"], dt.datetime.fromisoformat(body["periodStart"]),
                   dt.datetime.fromisoformat(body["periodEnd"]), body["inSync"])


@dataclass(frozen=True)
class Consumption:
    instance_id: str
    amount: int
    from_plan: int
    from_bonus: int
    credits_remaining: int
    replayed: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Consumption:
        return cls(body["instanceId"], body["amount"], body["fromPlan"], body["fromBonus"],
                   body["creditsRemaining"], body["replayed"])


@dataclass(frozen=True)
class Reservation:
    id: str
    instance_id: str
    amount: int
    status: str  # held | committed | released | expired
    committed_amount: int | None
    expires_at: dt.datetime
    replayed: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Reservation:
        return cls(body["reservationId"], body["instanceId"], body["amount"], body["status"],
                   body["committedAmount"], dt.datetime.fromisoformat(body["expiresAt"]),
                   body["replayed"])


@dataclass
class Hold:
    """An open reservation inside `reserve(...)`: `charge(n)` sets what the commit charges
    (default: all that is held)."""

    reservation: Reservation
    amount: int | None = field(default=None)

    def charge(self, amount: int) -> None:
        if not 0 <= amount <= self.reservation.amount:
            raise ValueError(f"charge 0 to {self.reservation.amount} credits, not {amount}")
        self.amount = amount


# -- requests (shared by both clients) -------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None


def _key(idempotency_key: str | None) -> str:
    return idempotency_key or f"csc-{uuid.uuid4()}"


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a 2xx answer; raise the error it is otherwise."""
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        return body
    code = str(body.get("error", "error"))
    message = str(body.get("message", response.text[:200]))
    if response.status_code in (429, 503):
        raise Unavailable(response.status_code, code, message, body, _retry_after(response))
    kind = _BY_STATUS.get(response.status_code, ClientError)
    if kind is Conflict and code == "idempotency_key_reused":
        kind = IdempotencyConflict
    raise kind(response.status_code, code, message, body)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return 5.0


def _transient(exc: Exception, attempt: int, backoff: float) -> tuple[Unavailable, float]:
    """The `Unavailable` for `exc`, and how long to wait before the next attempt."""
    if isinstance(exc, Unavailable):
        return exc, exc.retry_after if exc.status == 429 else backoff * 2 ** attempt
    return (Unavailable(0, "unreachable",
                        f"creditsync did not answer ({type(exc).__name__}: {exc}); retry "
                        "with the same idempotency key", retry_after=backoff * 2 ** attempt),
            backoff * 2 ** attempt)


_RETRIED = (httpx.TransportError, Unavailable)


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "User-Agent": "creditsync-client"}


class _Routes:
    """The requests of every operation (one place for paths and bodies)."""

    @staticmethod
    def credits(instance_id: str) -> _Request:
        return _Request("GET", f"/api/instances/{instance_id}/credits")

    @staticmethod
    def consume(instance_id: str, amount: int, key: str) -> _Request:
        return _Request("POST", f"/api/instances/{instance_id}/consume",
                        {"amount": amount, "idempotencyKey": key})

    @staticmethod
    def history(instance_id: str, limit: int, before: int | None) -> _Request:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        return _Request("GET", f"/api/instances/{instance_id}/history", params=params)

    @staticmethod
    def reserve(instance_id: str, amount: int, key: str, ttl: int) -> _Request:
        return _Request("POST", f"/api/instances/{instance_id}/reservations",
                        {"amount": amount, "idempotencyKey": key, "ttl": ttl})

    @staticmethod
    def commit(reservation_id: str, amount: int | None) -> _Request:
        return _Request("POST", f"/api/reservations/{reservation_id}/commit",
                        {} if amount is None else {"amount": amount})

    @staticmethod
    def release(reservation_id: str) -> _Request:
        return _Request("POST", f"/api/reservations/{reservation_id}/release")


# -- the clients -----------------------------------------------------------------------------


class Client:
    """`Client(url, key)`: the blocking client. Use as a context manager, or `close()`."""

    def __init__(self, url: str, key: str, *, timeout: float = 10.0,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.retries, self.backoff = retries, backoff
        self._http = httpx.Client(base_url=url, headers=_headers(key), timeout=timeout,
                                  transport=transport)

    def _send(self, request: _Request) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                return _answer(self._http.request(request.method, request.path,
                                                  json=request.json, params=request.params))
            except _RETRIED as exc:
                error, wait = _transient(exc, attempt, self.backoff)
                if attempt == self.retries or wait > MAX_WAIT:
                    raise error from exc
                time.sleep(wait)
        raise AssertionError("unreachable")

    def credits(self, instance_id: str) -> Credits:
        return Credits.of(self._send(_Routes.credits(instance_id)))

    def consume(self, instance_id: str, amount: int,
                idempotency_key: str | None = None) -> Consumption:
        """Charge once per key (a fresh one when None; retries reuse it)."""
        return Consumption.of(self._send(_Routes.consume(instance_id, amount,
                                                         _key(idempotency_key))))

    def history(self, instance_id: str, *, limit: int = 50,
                before: int | None = None) -> dict[str, Any]:
        return self._send(_Routes.history(instance_id, limit, before))

    def hold(self, instance_id: str, amount: int, idempotency_key: str | None = None, *,
             ttl: int = 900) -> Reservation:
        return Reservation.of(self._send(_Routes.reserve(instance_id, amount,
                                                         _key(idempotency_key), ttl)))

    def commit(self, reservation_id: str, amount: int | None = None) -> Reservation:
        return Reservation.of(self._send(_Routes.commit(reservation_id, amount)))

    def release(self, reservation_id: str) -> Reservation:
        return Reservation.of(self._send(_Routes.release(reservation_id)))

    @contextmanager
    def reserve(self, instance_id: str, amount: int, idempotency_key: str | None = None, *,
                ttl: int = 900) -> Iterator[Hold]:
        """Hold `amount`; commit on success (`Hold.charge` sets how much), release on an
        exception (which is raised on; if the release cannot be sent either, the hold
        expires by its TTL)."""
        hold = Hold(self.hold(instance_id, amount, idempotency_key, ttl=ttl))
        try:
            yield hold
        except BaseException:
            with contextlib.suppress(ClientError):  # else the hold expires by its TTL
                self.release(hold.reservation.id)
            raise
        self.commit(hold.reservation.id, hold.amount)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """`AsyncClient(url, key)`: the same operations, awaited."""

    def __init__(self, url: str, key: str, *, timeout: float = 10.0,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retries, self.backoff = retries, backoff
        self._http = httpx.AsyncClient(base_url=url, headers=_headers(key), timeout=timeout,
                                       transport=transport)

    async def _send(self, request: _Request) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                return _answer(await self._http.request(
                    request.method, request.path, json=request.json, params=request.params))
            except _RETRIED as exc:
                error, wait = _transient(exc, attempt, self.backoff)
                if attempt == self.retries or wait > MAX_WAIT:
                    raise error from exc
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def credits(self, instance_id: str) -> Credits:
        return Credits.of(await self._send(_Routes.credits(instance_id)))

    async def consume(self, instance_id: str, amount: int,
                      idempotency_key: str | None = None) -> Consumption:
        return Consumption.of(await self._send(_Routes.consume(instance_id, amount,
                                                               _key(idempotency_key))))

    async def history(self, instance_id: str, *, limit: int = 50,
                      before: int | None = None) -> dict[str, Any]:
        return await self._send(_Routes.history(instance_id, limit, before))

    async def hold(self, instance_id: str, amount: int, idempotency_key: str | None = None,
                   *, ttl: int = 900) -> Reservation:
        return Reservation.of(await self._send(_Routes.reserve(
            instance_id, amount, _key(idempotency_key), ttl)))

    async def commit(self, reservation_id: str, amount: int | None = None) -> Reservation:
        return Reservation.of(await self._send(_Routes.commit(reservation_id, amount)))

    async def release(self, reservation_id: str) -> Reservation:
        return Reservation.of(await self._send(_Routes.release(reservation_id)))

    @asynccontextmanager
    async def reserve(self, instance_id: str, amount: int,
                      idempotency_key: str | None = None, *,
                      ttl: int = 900) -> AsyncIterator[Hold]:
        """`async with client.reserve(...) as hold:` commit on success, release on error."""
        hold = Hold(await self.hold(instance_id, amount, idempotency_key, ttl=ttl))
        try:
            yield hold
        except BaseException:
            with contextlib.suppress(ClientError):  # else the hold expires by its TTL
                await self.release(hold.reservation.id)
            raise
        await self.commit(hold.reservation.id, hold.amount)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
