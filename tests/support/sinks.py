"""Local alert sinks for tests: an HTTP server that records JSON posts, and an SMTP server.

Both listen on 127.0.0.1 on a free port and keep what they received, so a test can wait
for an alert to arrive and assert on its exact text.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import http.server
import json
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller

from tests.support.postgres import free_port


class HttpSink:
    """Records the JSON bodies POSTed to it (a stand-in for a Slack incoming webhook)."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = status
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                sink.received.append({"path": self.path, "json": body,
                                      "content_type": self.headers.get("Content-Type")})
                self.send_response(sink.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> list[str]:
        return [str(r["json"].get("text", "")) for r in self.received]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage


@dataclass
class _Collector:
    mails: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps every mail it receives."""

    def __init__(self) -> None:
        self._collector = _Collector()
        self.port = free_port()
        self._controller = Controller(self._collector, hostname="127.0.0.1", port=self.port)

    @property
    def mails(self) -> list[Mail]:
        return self._collector.mails

    def url(self, sender: str = "creditsync@example.test",
            to: str = "ops@example.test,oncall@example.test") -> str:
        return f"smtp://127.0.0.1:{self.port}?from={sender}&to={to}"

    def __enter__(self) -> Self:
        self._controller.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._controller.stop()
