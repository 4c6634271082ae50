"""The marketplace's own view of an instance: Wix's App Instance API, a second source of
desired state for webhooks that never came.

For one installed instance the app asks for an access token (OAuth 2 client credentials,
`POST {api}/oauth2/token`, cached per instance until shortly before it expires) and then for
the instance (`GET {api}/apps/v1/instance`): `isFree`, and for a paid plan `billing` with
`packageName` (the plan, resolved like a `vendorProductId`), `billingCycle` and, for yearly
and longer plans, `expirationDate`. Requests are spaced to at most `rate` per second per
process. Errors say what kind they are: `Unavailable` (429 with its `Retry-After`, 5xx,
timeouts: try later) or `CredentialsRejected` (401/403: the app id or secret is wrong, or the
app was removed from that site). An error never changes an instance.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from creditsync import clock, errors, inbox

EVENT_TYPE = "MarketplaceSnapshot"  # an observation's type in the inbox
TOKEN_MARGIN = dt.timedelta(minutes=5)  # a cached token is renewed this long before expiry
TIMEOUT_S = 5.0


class MarketplaceUnavailable(errors.Unavailable):
    """The marketplace did not answer usefully now (429, 5xx, a timeout); try later."""

    code = "marketplace_unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialsRejected(errors.CreditsyncError):
    """401/403: the app's credentials are wrong, or the app was removed from that site."""

    code = "marketplace_credentials_rejected"


@dataclass(frozen=True)
class Observation:
    """What the marketplace said about one instance at time `at`."""

    instance_id: str
    at: dt.datetime
    is_free: bool
    package: str | None  # `billing.packageName`; None when free
    cycle: str | None
    expires_at: dt.datetime | None  # `billing.expirationDate` (yearly and longer plans)

    def as_event(self) -> inbox.Incoming:
        """The observation as an inbox event, accepted by the same decision as a webhook."""
        payload: dict[str, Any] = {"isFree": self.is_free, "source": "GET /apps/v1/instance"}
        if not self.is_free:
            payload["billing"] = {"packageName": self.package, "billingCycle": self.cycle,
                                  "expirationDate": self.expires_at.isoformat()
                                  if self.expires_at else None}
        return inbox.Incoming(self.instance_id, EVENT_TYPE, self.at,
                              None if self.is_free else self.package, self.expires_at,
                              payload)


class RateLimiter:
    """At most `rate` acquisitions per second, spaced evenly (shared by the threads)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        """Ask nothing for `seconds` (a 429's `Retry-After`)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)


Hook = Callable[[str, str, float], None]  # (endpoint, outcome, seconds)
CACHED = "cached"  # the outcome a hook hears for a token taken from the cache


class Client:
    """The two endpoints, with a per-instance token cache and a request rate."""

    def __init__(
        self, api_url: str, app_id: str, app_secret: str, *, rate: float,
        http: httpx.Client | None = None, on_request: Hook | None = None,
        now: Callable[[], dt.datetime] = clock.utcnow, timeout: float = TIMEOUT_S,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.app_id = app_id
        self.rate = rate
        self._secret = app_secret
        self._http = http or httpx.Client(timeout=timeout)
        self._limiter = RateLimiter(rate)
        self._tokens: dict[str, tuple[str, dt.datetime]] = {}
        self._lock = threading.Lock()
        self._on_request = on_request
        self._now = now
        self.token_requests = 0
        self.token_cache_hits = 0

    def close(self) -> None:
        self._http.close()

    def lookup(self, instance_id: str) -> Observation:
        """What the marketplace says about `instance_id` now."""
        token = self._token(instance_id)
        at = self._now()
        body = self._call("instance", "GET", "/apps/v1/instance",
                          headers={"Authorization": token})
        try:
            return _observation(instance_id, at, body)
        except (KeyError, TypeError, ValueError) as exc:
            raise MarketplaceUnavailable(
                f"the marketplace's answer for instance {instance_id} is not an app instance "
                f"({exc}); it is asked again on the next audit") from exc

    def _token(self, instance_id: str) -> str:
        with self._lock:
            cached = self._tokens.get(instance_id)
            hit = cached is not None and self._now() < cached[1] - TOKEN_MARGIN
            if hit:
                self.token_cache_hits += 1
        if hit:
            assert cached is not None
            if self._on_request is not None:
                self._on_request("token", CACHED, 0.0)
            return cached[0]
        body = self._call("token", "POST", "/oauth2/token", json_body={
            "grant_type": "client_credentials", "client_id": self.app_id,
            "client_secret": self._secret, "instance_id": instance_id})
        token, lifetime = body.get("access_token"), body.get("expires_in", 14400)
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise MarketplaceUnavailable("the marketplace's token answer has no access_token")
        with self._lock:
            self.token_requests += 1
            self._tokens[instance_id] = (
                token, self._now() + dt.timedelta(seconds=float(lifetime)))
        return token

    def _call(
        self, endpoint: str, method: str, path: str, *, headers: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._limiter.acquire()
        started = time.perf_counter()
        outcome = "error"
        try:
            try:
                response = self._http.request(method, self.api_url + path, headers=headers,
                                              json=json_body)
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                raise MarketplaceUnavailable(f"the marketplace did not answer {method} {path} "
                                             f"within {self.timeout:g} s") from exc
            except httpx.HTTPError as exc:
                outcome = "unreachable"
                raise MarketplaceUnavailable(
                    f"cannot reach the marketplace at {self.api_url}: {exc}") from exc
            outcome = str(response.status_code)
            if response.status_code in (401, 403):
                raise CredentialsRejected(
                    f"the marketplace refused {method} {path} ({response.status_code}): check "
                    "CREDITSYNC_WIX_APP_ID and CREDITSYNC_APP_SECRET, or the app was removed "
                    "from that site")
            if response.status_code == 429:
                retry_after = _retry_after(response)
                self._limiter.pause(retry_after if retry_after is not None else 1.0)
                raise MarketplaceUnavailable(
                    f"the marketplace is rate limiting {method} {path} (429)",
                    retry_after=retry_after)
            if response.status_code >= 300:
                raise MarketplaceUnavailable(
                    f"the marketplace answered {method} {path} with {response.status_code}")
            try:
                body = response.json()
            except json.JSONDecodeError as exc:
                outcome = "invalid"
                raise MarketplaceUnavailable(
                    f"the marketplace's answer to {method} {path} is not JSON") from exc
            if not isinstance(body, dict):
                outcome = "invalid"
                raise MarketplaceUnavailable(
                    f"the marketplace's answer to {method} {path} is not an object")
            outcome = "ok"
            return body
        finally:
            if self._on_request is not None:
                self._on_request(endpoint, outcome, time.perf_counter() - started)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _observation(instance_id: str, at: dt.datetime, body: dict[str, Any]) -> Observation:
    found = body["instance"]
    if not isinstance(found, dict):
        raise TypeError("instance is not an object")
    is_free = found["isFree"]
    if not isinstance(is_free, bool):
        raise TypeError("isFree is not a boolean")
    if is_free:
        return Observation(instance_id, at, True, None, None, None)
    billing = found["billing"]
    package = billing["packageName"]
    if not isinstance(package, str) or not package:
        raise TypeError("billing.packageName is not a string")
    expires = billing.get("expirationDate")
    moment = dt.datetime.fromisoformat(expires) if isinstance(expires, str) and expires else None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    cycle = billing.get("billingCycle")
    return Observation(instance_id, at, False, package, cycle if isinstance(cycle, str) else None,
                       moment.astimezone(dt.UTC) if moment else None)
