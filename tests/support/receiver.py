"""A local app that receives creditsync's events: a real HTTP server in a thread.

It verifies every request with `standardwebhooks` (as an app developer would), records
each attempt (webhook-id, verified, the status it answered) and what it accepted, and can
be told to fail for some instances (503) or to hang (longer than the client's timeout).
"""

from __future__ import annotations

import base64
import http.server
import secrets
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import standardwebhooks

from tests.support.postgres import free_port


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Attempt:
    webhook_id: str
    verified: bool
    status: int
    payload: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class AppReceiver:
    secret: str = field(default_factory=new_secret)
    failing: set[str] = field(default_factory=set)  # instance ids answered 503
    fail_all: bool = False
    hang_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self
        verifier = standardwebhooks.Webhook(self.secret)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = verifier.verify(body, headers)
                    verified = True
                except standardwebhooks.WebhookVerificationError:
                    payload, verified = None, False
                instance = (payload or {}).get("data", {}).get("instanceId")
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                status = 401 if not verified else (
                    503 if receiver.fail_all or instance in receiver.failing else 204)
                with receiver._lock:
                    receiver.attempts.append(Attempt(headers.get("webhook-id", ""), verified,
                                                     status, payload, headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/creditsync"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def accepted(self) -> list[Attempt]:
        """What the app took (2xx), in the order it took them."""
        with self._lock:
            return [a for a in self.attempts if a.status < 300]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
