"""Alerts: tell a person when credits need attention, by chat webhook and/or mail.

Three things alert, from the operator and from the standalone loop alike: a run that found
drifted instances (what the original system's users silently suffered from), webhooks that
failed or were quarantined, and the loop turning `Degraded`. `Alerter.send()` only puts the
alert on a bounded queue; a background thread delivers it, so a slow or dead chat or mail
server never holds up convergence. Each alert key is throttled: at most one alert per key
per window, and the next one says how many were held back.

Targets: `CREDITSYNC_ALERT_WEBHOOK_URL` gets a Slack-compatible JSON POST (`{"text": ...}`);
`CREDITSYNC_ALERT_SMTP_URL` (`smtp://[user:password@]host[:port]?from=a@x&to=b@y,c@z`,
`smtps://` for implicit TLS, `starttls=true` to upgrade) gets a plain-text mail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.engine import Engine

from creditsync import config, convergence, enums, inbox

log = logging.getLogger("creditsync.alerts")

Severity = Literal["info", "warning", "critical"]
DRIFT, WEBHOOKS, DEGRADED, RECOVERED = "drift", "webhooks", "degraded", "recovered"
MISSED = "missed"
QUEUE_SIZE = 100
SAMPLE = 5


@dataclasses.dataclass(frozen=True)
class Alert:
    """One message; `key` is what throttling counts (one alert per key per window)."""

    key: str
    severity: Severity
    title: str
    text: str


@dataclasses.dataclass(frozen=True)
class SmtpTarget:
    """Where and how alert mail goes (parsed from `CREDITSYNC_ALERT_SMTP_URL`)."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse `smtp://[user:pass@]host[:port]?from=..&to=..[,..][&starttls=true]`."""
    parts = urlsplit(url)
    where = "CREDITSYNC_ALERT_SMTP_URL"
    if parts.scheme not in ("smtp", "smtps"):
        raise config.ConfigError(f"{where}: use smtp:// or smtps://, got {parts.scheme or url!r}")
    if not parts.hostname:
        raise config.ConfigError(f"{where}: the URL names no host")
    query = parse_qs(parts.query)
    sender = query.get("from", [""])[0]
    recipients = tuple(a.strip() for v in query.get("to", []) for a in v.split(",") if a.strip())
    if not sender or not recipients:
        raise config.ConfigError(
            f"{where}: add ?from=sender@example.com&to=ops@example.com (to= may list several, "
            "comma-separated)"
        )
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError as exc:
        raise config.ConfigError(f"{where}: bad port ({exc})") from exc
    return SmtpTarget(
        host=parts.hostname, port=port, sender=sender, recipients=recipients,
        implicit_tls=parts.scheme == "smtps",
        starttls=query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class Throttle:
    """At most one alert per key per `window`; counts what it held back."""

    def __init__(self, window: dt.timedelta, clock: Callable[[], float] = time.monotonic):
        self.window = window.total_seconds()
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """None when `key` is throttled now; else how many were held back since the last."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self.window:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


Transport = Callable[[Alert], None]


class Alerter:
    """Throttles alerts and delivers them from a background thread; `send` never blocks."""

    def __init__(
        self,
        transports: Sequence[tuple[str, Transport]],
        throttle: Throttle,
        *,
        source: str = "creditsync",
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.transports = tuple(transports)
        self.throttle = throttle
        self.source = source
        self.delivered = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> bool:
        """Queue `alert` unless throttled or the queue is full; True when queued."""
        held = self.throttle.admit(alert.key)
        if held is None:
            log.debug("alert %s throttled", alert.key)
            return False
        if held:
            alert = dataclasses.replace(
                alert, text=f"{alert.text}\n({held} similar alert(s) held back by throttling)")
        self._ensure_thread()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.warning("alert queue full; dropped alert %s: %s", alert.key, alert.title)
            return False
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="creditsync-alerts",
                                                daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self.deliver(alert)
            finally:
                self._queue.task_done()

    def deliver(self, alert: Alert) -> None:
        """Send `alert` to every target now (the worker thread calls this); never raises."""
        for name, transport in self.transports:
            try:
                transport(alert)
            except Exception as exc:
                log.warning("could not deliver alert %r by %s: %s", alert.title, name, exc,
                            extra={"alert": alert.key, "error": f"{type(exc).__name__}: {exc}"})
            else:
                self.delivered += 1
                log.info("alert %r sent by %s", alert.title, name, extra={"alert": alert.key})

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the thread."""
        with self._lock:
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


def format_text(alert: Alert, source: str) -> str:
    return f"[{source}] {alert.severity.upper()}: {alert.title}\n{alert.text}"


def webhook_transport(url: str, source: str, timeout: float = 5.0) -> Transport:
    """POST `{"text": ...}` (what Slack, Mattermost and most chat webhooks accept)."""

    def post(alert: Alert) -> None:
        body = json.dumps({"text": format_text(alert, source)}).encode()
        request = urllib.request.Request(  # noqa: S310 - the operator configures the URL
            url, data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()

    return post


def smtp_transport(target: SmtpTarget, source: str, timeout: float = 10.0) -> Transport:
    """Send a plain-text mail through `target`."""

    def mail(alert: Alert) -> None:
        message = EmailMessage()
        message["Subject"] = f"[{source}] {alert.title}"
        message["From"] = target.sender
        message["To"] = ", ".join(target.recipients)
        message["X-Creditsync-Alert"] = alert.key
        message.set_content(format_text(alert, source) + "\n")
        smtp: smtplib.SMTP
        if target.implicit_tls:
            smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(target.host, target.port, timeout=timeout,
                                local_hostname=socket.gethostname() or "localhost")
        with smtp:
            if target.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if target.username:
                smtp.login(target.username, target.password or "")
            smtp.send_message(message)

    return mail


def from_settings(settings: config.Settings, source: str = "creditsync") -> Alerter | None:
    """The alerter the settings ask for, or None when no alert target is configured."""
    transports: list[tuple[str, Transport]] = []
    if settings.alert_webhook_url:
        webhook_url = settings.alert_webhook_url.get_secret_value()
        if urlsplit(webhook_url).scheme not in ("http", "https"):
            raise config.ConfigError("CREDITSYNC_ALERT_WEBHOOK_URL: use an http(s):// URL")
        transports.append(("webhook", webhook_transport(webhook_url, source)))
    if settings.alert_smtp_url:
        smtp_url = settings.alert_smtp_url.get_secret_value()
        transports.append(("mail", smtp_transport(parse_smtp_url(smtp_url), source)))
    if not transports:
        return None
    return Alerter(transports, Throttle(settings.alert_throttle), source=source)


# ---- what alerts -------------------------------------------------------------------------

def _sample(summary: convergence.Summary) -> str:
    shown = [
        f"{c.instance_id} ({c.before.plan_id} {c.before.credits_total:,} → "
        f"{c.after.plan_id} {c.after.credits_total:,})"
        for c in summary.changes[:SAMPLE]
    ]
    more = summary.repaired - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def for_run(summary: convergence.Summary) -> list[Alert]:
    """A run that found drift alerts: users had (or, in a dry run, still have) wrong credits.

    Instances on a plan missing from the catalog are not drift to repair; the loop's
    `Degraded`/`PlanMissing` alert covers them. A tick converges changes it was told about
    (a period ended, a queued subscription): that is no drift, and it alerts nothing.
    """
    found = missed(summary)
    drifted = summary.drifted - summary.plan_missing
    if drifted <= 0 or summary.scope == "changed":
        return found
    if summary.dry_run:
        text = (f"A dry run ({summary.trigger}) found {drifted:,} of "
                f"{summary.scanned:,} instances drifted; nothing was repaired.")
    else:
        text = (f"A {summary.trigger} run found {drifted:,} of {summary.scanned:,} "
                f"instances drifted and repaired {summary.repaired:,}.")
        if summary.failed:
            text += f" {summary.failed:,} could not be repaired and will be retried."
    if summary.changes:
        text += f"\nExamples: {_sample(summary)}"
    return [Alert(DRIFT, "warning", f"{drifted:,} instances had drifted credits", text),
            *found]


def missed(summary: convergence.Summary) -> list[Alert]:
    """A full scan that changed instances no tick had been told about: something changes
    credits without announcing it (a hand edit, a path that neither converges nor queues)."""
    if not summary.missed:
        return []
    return [Alert(MISSED, "warning",
                  f"the full scan found {summary.missed:,} instances the ticks missed",
                  f"A {summary.trigger} run changed {summary.missed:,} instances that no "
                  "incremental tick had been told about: something changes instances or "
                  "subscriptions without converging or queuing them (a hand edit in the "
                  "database?). They are repaired now; until the cause is found they wait for "
                  "the full scan (CREDITSYNC_FULL_SCAN_INTERVAL).")]


def for_backlog(before: Mapping[str, int] | None, after: Mapping[str, int]) -> list[Alert]:
    """Webhooks newly failed or quarantined since `before` (None: since nothing)."""
    grown = {
        status: after.get(status, 0) - (before or {}).get(status, 0)
        for status in (enums.EventStatus.FAILED, enums.EventStatus.QUARANTINED)
    }
    grown = {status: n for status, n in grown.items() if n > 0}
    if not grown:
        return []
    what = " and ".join(f"{n:,} more {status}" for status, n in grown.items())
    text = (f"Billing webhooks need attention: {what}. Now {after.get('failed', 0):,} failed, "
            f"{after.get('quarantined', 0):,} quarantined, {after.get('pending', 0):,} pending. "
            "See `creditsync webhooks list` and replay them once the cause is fixed.")
    return [Alert(WEBHOOKS, "warning", "billing webhooks failed or quarantined", text)]


def degraded(where: str, reason: str, message: str) -> Alert:
    return Alert(DEGRADED, "critical", f"{where} is degraded: {reason}", message)


def recovered(where: str, message: str) -> Alert:
    return Alert(RECOVERED, "info", f"{where} recovered", message)


@dataclasses.dataclass
class RunnerAlerts:
    """The standalone loop's hooks: drift and webhook alerts after a run, Degraded on errors."""

    alerter: Alerter
    engine: Engine
    where: str = "creditsync run"
    backlog: dict[str, int] | None = None
    failing: bool = False

    def on_run(self, summary: convergence.Summary) -> None:
        if self.failing:
            self.failing = False
            self.alerter.send(recovered(self.where, "Convergence runs succeed again."))
        for alert in for_run(summary):
            self.alerter.send(alert)
        try:
            counts = inbox.counts(self.engine)
        except Exception as exc:  # the next run tries again
            log.debug("could not count the webhook backlog: %s", exc)
            return
        for alert in for_backlog(self.backlog, counts):
            self.alerter.send(alert)
        self.backlog = counts

    def on_error(self, exc: Exception) -> None:
        self.failing = True
        self.alerter.send(degraded(self.where, type(exc).__name__,
                                   f"Convergence failed: {exc}. It is retried on the next tick."))
