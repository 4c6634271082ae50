"""The HTTP side of events to the app: one signed POST per event (Standard Webhooks).

Each request carries `webhook-id` (the event's outbox id, the same on every retry),
`webhook-timestamp` (when this attempt is sent, Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256>` of `id.timestamp.body` with the `whsec_` secret), made by the
`standardwebhooks` package, which app developers verify with as well. A 2xx answer is
success; anything else (another status, a timeout, a refused connection) raises
`outbox.DeliveryFailed` and the outbox retries. Redirects are not followed.
"""

from __future__ import annotations

import datetime as dt

import httpx
import standardwebhooks

from creditsync import config, outbox

TIMEOUT_S = 10.0
CONCURRENCY = 8  # instances delivered to in parallel
USER_AGENT = "creditsync-webhooks/1"


class Client:
    """Signs and POSTs events to the app's URL (thread-safe: one per process)."""

    def __init__(self, url: str, secret: str, *, timeout: float = TIMEOUT_S,
                 concurrency: int = CONCURRENCY) -> None:
        config.webhook_secret_bytes(secret)  # a clear error for a bad secret
        self.url = url
        self.concurrency = concurrency
        self._signer = standardwebhooks.Webhook(secret)
        self._http = httpx.Client(timeout=timeout, follow_redirects=False,
                                  headers={"user-agent": USER_AGENT},
                                  limits=httpx.Limits(max_connections=concurrency))

    def headers(self, webhook_id: str, body: str, at: dt.datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt sent at `at`."""
        return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": self._signer.sign(webhook_id, at, body),
                "content-type": "application/json"}

    def send(self, webhook_id: str, body: str) -> None:
        """POST one event, signed now; raises `outbox.DeliveryFailed` unless the app
        answers 2xx."""
        headers = self.headers(webhook_id, body, dt.datetime.now(dt.UTC))
        try:
            answer = self._http.post(self.url, content=body.encode(), headers=headers)
        except httpx.TimeoutException as exc:
            raise outbox.DeliveryFailed(f"timeout after {self._http.timeout.read}s") from exc
        except httpx.HTTPError as exc:
            raise outbox.DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= answer.status_code < 300:
            said = answer.text.strip()[:200]
            raise outbox.DeliveryFailed(f"HTTP {answer.status_code}"
                                        + (f": {said}" if said else ""))

    def close(self) -> None:
        self._http.close()


def from_settings(settings: config.Settings) -> Client | None:
    """The client the settings ask for; None when `CREDITSYNC_APP_WEBHOOK_URL` is unset
    (events are still written to the outbox, and sent once a deliverer has the URL)."""
    if not settings.app_webhook_url:
        return None
    secret = settings.app_webhook_secret
    if secret is None or not secret.get_secret_value():
        raise config.ConfigError(
            "CREDITSYNC_APP_WEBHOOK_URL is set but CREDITSYNC_APP_WEBHOOK_SECRET is not: events "
            "to the app are signed (e.g. `echo whsec_$(openssl rand -base64 32)`)")
    return Client(settings.app_webhook_url, secret.get_secret_value())
