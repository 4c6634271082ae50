"""A STAND-IN for the marketplace's REST API (Wix), for tests and local tries: not Wix.

The real API cannot run here, so this serves its two endpoints on loopback as Wix's docs
describe them: `POST /oauth2/token` (client credentials for one instance → an access token
valid `expires_in` 14,400 s) and `GET /apps/v1/instance` (with `Authorization: <token>` →
`{"instance": {"instanceId", "appName", "isFree", "billing"?...}, "site": {...}}`, `billing`
only for a paid plan, `expirationDate` only for yearly and longer cycles).

What it says about an instance is set by the test (`set_paid`, `set_free`) or over HTTP
(`PUT /_standin/instances/{id}` with `{"package": "pro"}` or `{"free": true}`, used by
`creditsync dev marketplace`). It can misbehave on purpose: `fail_with(429, retry_after=…)`,
`fail_with(503)`, `delay` (slower than the client's timeout), wrong credentials (any
client id or secret other than the configured ones get 401). It counts requests.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

TOKEN_LIFETIME_S = 14400


@dataclass
class Failure:
    status: int
    retry_after: float | None = None
    times: int | None = None  # None: until cleared


@dataclass
class StandIn:
    """The stand-in's state; `serve()` puts it on a loopback port."""

    app_id: str
    app_secret: str
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> instance id
    token_requests: dict[str, int] = field(default_factory=dict)
    instance_requests: dict[str, int] = field(default_factory=dict)
    request_times: list[float] = field(default_factory=list)
    failure: Failure | None = None
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_paid(self, instance_id: str, package: str, *, cycle: str = "MONTHLY",
                 expires: dt.datetime | None = None) -> None:
        billing: dict[str, Any] = {"packageName": package, "billingCycle": cycle}
        if expires is not None:
            billing["expirationDate"] = expires.astimezone(dt.UTC).isoformat().replace(
                "+00:00", "Z")
        with self.lock:
            self.instances[instance_id] = {"isFree": False, "billing": billing}

    def set_free(self, instance_id: str) -> None:
        with self.lock:
            self.instances[instance_id] = {"isFree": True}

    def fail_with(self, status: int, *, retry_after: float | None = None,
                  times: int | None = None) -> None:
        with self.lock:
            self.failure = Failure(status, retry_after, times)

    def heal(self) -> None:
        with self.lock:
            self.failure = None
            self.delay = 0.0

    # -- the endpoints --------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.request_times.append(time.monotonic())
            failure = self.failure
            if failure is not None and not path.startswith("/_standin"):
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self.failure = None
                extra = ({"Retry-After": f"{failure.retry_after:g}"}
                         if failure.retry_after is not None else {})
                return failure.status, extra, {"message": "stand-in failure"}
        if method == "POST" and path == "/oauth2/token":
            return self._token(body)
        if method == "GET" and path == "/apps/v1/instance":
            return self._instance(headers.get("authorization", ""))
        if method == "PUT" and path.startswith("/_standin/instances/"):
            return self._control(path.rsplit("/", 1)[1], body)
        return 404, {}, {"message": f"no route {method} {path} on the marketplace stand-in"}

    def _token(self, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {}, {"message": "the body is not JSON"}
        if (request.get("grant_type") != "client_credentials"
                or request.get("client_id") != self.app_id
                or request.get("client_secret") != self.app_secret):
            return 401, {}, {"message": "invalid client credentials"}
        instance_id = str(request.get("instance_id") or "")
        token = "OAUTH2." + secrets.token_urlsafe(16)
        with self.lock:
            self.tokens[token] = instance_id
            self.token_requests[instance_id] = self.token_requests.get(instance_id, 0) + 1
        return 200, {}, {"access_token": token, "token_type": "Bearer",
                         "expires_in": TOKEN_LIFETIME_S}

    def _instance(self, token: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            instance_id = self.tokens.get(token)
            if instance_id is None:
                return 401, {}, {"message": "invalid access token"}
            self.instance_requests[instance_id] = self.instance_requests.get(instance_id, 0) + 1
            found = dict(self.instances.get(instance_id, {"isFree": True}))
        return 200, {}, {"instance": {"instanceId": instance_id, "appName": "creditsync demo",
                                      "appVersion": "1.0.0", "permissions": [],
                                      "availablePlans": [], **found},
                         "site": {"siteDisplayName": f"site of {instance_id}"}}

    def _control(self, instance_id: str, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            wanted = json.loads(body or b"{}")
        except ValueError:
            return 400, {}, {"message": "the body is not JSON"}
        if wanted.get("free"):
            self.set_free(instance_id)
        elif isinstance(wanted.get("package"), str):
            expires = wanted.get("expirationDate")
            self.set_paid(instance_id, wanted["package"], cycle=wanted.get("cycle", "MONTHLY"),
                          expires=dt.datetime.fromisoformat(expires) if expires else None)
        else:
            return 400, {}, {"message": 'send {"package": "<packageName>"} or {"free": true}'}
        return 200, {}, {"instanceId": instance_id, **self.instances[instance_id]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, answer = self.server.standin.answer(
            method, urlsplit(self.path).path, {k.lower(): v for k, v in self.headers.items()},
            body)
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read the counters instead


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], standin: StandIn) -> None:
        super().__init__(address, _Handler)
        self.standin = standin


@dataclass
class Running:
    """A served stand-in: its URL, its state, and how to stop it."""

    standin: StandIn
    server: _Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(standin: StandIn, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Serve `standin` on `host:port` (0: a free port) in a background thread."""
    server = _Server((host, port), standin)
    thread = threading.Thread(target=server.serve_forever, name="marketplace-standin",
                              daemon=True)
    thread.start()
    return Running(standin, server, thread)
