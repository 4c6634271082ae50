"""Alerts: throttled, delivered off the caller's thread to a real HTTP and SMTP sink."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy.engine import Engine

from creditsync import alerts, clock, config, convergence, runner, seed
from tests.support.sinks import HttpSink, SmtpSink
from tests.support.times import T0

DRIFT = alerts.Alert("drift", "warning", "3 instances had drifted credits", "details")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_admits_one_per_key_per_window_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = alerts.Throttle(dt.timedelta(minutes=10), clock)
    assert throttle.admit("drift") == 0
    assert throttle.admit("drift") is None
    assert throttle.admit("drift") is None
    assert throttle.admit("degraded") == 0  # keys are independent
    clock.now += 599
    assert throttle.admit("drift") is None
    clock.now += 1
    assert throttle.admit("drift") == 3


def test_send_never_waits_for_a_slow_target() -> None:
    release = threading.Event()
    seen: list[alerts.Alert] = []

    def slow(alert: alerts.Alert) -> None:
        release.wait(10)
        seen.append(alert)

    alerter = alerts.Alerter([("slow", slow)], alerts.Throttle(dt.timedelta(0)), queue_size=2)
    started = time.monotonic()
    results = [alerter.send(DRIFT) for _ in range(5)]
    assert time.monotonic() - started < 0.5
    # one is being delivered, two wait in the queue, the rest are dropped, not waited for
    assert results.count(False) == alerter.dropped >= 2
    release.set()
    assert alerter.flush(10)
    alerter.close()
    assert len(seen) == results.count(True)


def test_a_failing_target_does_not_stop_the_others() -> None:
    def broken(alert: alerts.Alert) -> None:
        raise OSError("connection refused")

    seen: list[str] = []
    alerter = alerts.Alerter([("broken", broken), ("ok", lambda a: seen.append(a.title))],
                             alerts.Throttle(dt.timedelta(0)))
    alerter.send(DRIFT)
    assert alerter.flush(5)
    alerter.close()
    assert seen == [DRIFT.title]
    assert alerter.delivered == 1


def test_an_alert_reaches_a_webhook_and_a_mailbox() -> None:
    with HttpSink() as http, SmtpSink() as smtp:
        settings = config.from_env({"CREDITSYNC_ALERT_WEBHOOK_URL": http.url,
                                    "CREDITSYNC_ALERT_SMTP_URL": smtp.url(),
                                    "CREDITSYNC_ALERT_THROTTLE": "1h"})
        alerter = alerts.from_settings(settings, source="creditsync-test")
        assert alerter is not None
        assert alerter.send(DRIFT)
        assert not alerter.send(DRIFT)  # throttled
        assert alerter.flush(10)
        alerter.close()
        assert http.received == [{
            "path": "/hooks/alerts", "content_type": "application/json",
            "json": {"text": "[creditsync-test] WARNING: 3 instances had drifted credits\n"
                             "details"}}]
        [mail] = smtp.mails
        assert mail.sender == "creditsync@example.test"
        assert mail.recipients == ["ops@example.test", "oncall@example.test"]
        assert mail.message["Subject"] == "[creditsync-test] 3 instances had drifted credits"
        assert mail.message["X-Creditsync-Alert"] == "drift"
        assert "details" in mail.message.get_content()


def test_no_target_means_no_alerter_and_bad_urls_say_what_to_set() -> None:
    assert alerts.from_settings(config.Settings()) is None
    with pytest.raises(config.ConfigError, match="add \\?from="):
        alerts.parse_smtp_url("smtp://mail.example.test")
    with pytest.raises(config.ConfigError, match="use smtp:// or smtps://"):
        alerts.parse_smtp_url("http://mail.example.test?from=a@b&to=c@d")
    with pytest.raises(config.ConfigError, match="http\\(s\\)://"):
        alerts.from_settings(config.Settings(alert_webhook_url="ftp://x"))
    target = alerts.parse_smtp_url(
        "smtps://bot%40x:s%3Dcret@mail.example.test?from=bot@x&to=a@x,b@x&starttls=true")
    assert (target.host, target.port, target.implicit_tls, target.starttls) == (
        "mail.example.test", 465, True, True)
    assert (target.username, target.password, target.recipients) == (
        "bot@x", "s=cret", ("a@x", "b@x"))
    assert "s=cret" not in repr(target)


def test_what_alerts() -> None:
    quiet = convergence.Summary("r", "timer", False, T0, scanned=10)
    assert alerts.for_run(quiet) == []
    drifted = convergence.Summary("r", "timer", False, T0, scanned=10, drifted=4, repaired=3,
                                  failed=1, plan_missing=0)
    [alert] = alerts.for_run(drifted)
    assert (alert.key, alert.title) == ("drift", "4 instances had drifted credits")
    assert "repaired 3" in alert.text
    assert "1 could not be repaired" in alert.text
    only_missing = convergence.Summary("r", "timer", False, T0, scanned=10, drifted=2,
                                       plan_missing=2, missing_plans={"scale"})
    assert alerts.for_run(only_missing) == []  # Degraded/PlanMissing alerts for those
    assert alerts.for_backlog(None, {"failed": 0, "quarantined": 0}) == []
    [hooks] = alerts.for_backlog({"failed": 1, "quarantined": 0},
                                 {"failed": 1, "quarantined": 2, "pending": 5})
    assert hooks.key == "webhooks"
    assert hooks.text.startswith("Billing webhooks need attention: 2 more quarantined.")


def test_the_standalone_loop_alerts_on_drift_and_errors(engine: Engine) -> None:
    sent: list[alerts.Alert] = []
    alerter = alerts.Alerter([("list", sent.append)], alerts.Throttle(dt.timedelta(0)))
    loop = runner.Runner(engine, dt.timedelta(hours=1),
                         alerter=alerter)
    seed.seed(engine, 20, 50, now=clock.utcnow())
    assert loop.converge("timer") is not None
    loop.on_error[0](RuntimeError("database is down"))
    assert loop.converge("timer") is not None  # nothing drifted: no drift alert, recovered
    assert alerter.flush(5)
    alerter.close()
    assert [(a.key, a.title) for a in sent] == [
        ("drift", "10 instances had drifted credits"),
        ("degraded", "creditsync run is degraded: RuntimeError"),
        ("recovered", "creditsync run recovered"),
    ]
