"""The real servers: `creditsync run --dev` as a newcomer tries it, and a crash (SIGKILL)
while webhooks stream in, after which every event that was answered 200 is applied."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from creditsync import drift
from creditsync.storage import database, models
from creditsync_api import devkeys, wix
from tests.api.conftest import HOOK, Server, server_env
from tests.support import waiting
from tests.support.database import fresh_database

PLANS = ("starter", "pro", "scale")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITSYNC_")}
    return {**env, **extra}


def _cli(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "creditsync.cli.main", *args], cwd=cwd,
                          env=_clean_env(), capture_output=True, text=True, check=check,
                          timeout=60)


def test_run_dev_lets_a_newcomer_buy_a_plan(tmp_path: Path) -> None:
    server = Server(["run", "--dev"], _clean_env(), tmp_path / "run.log", cwd=tmp_path)
    try:
        server.wait_ready()
        hook = f"{server.url}{HOOK}"
        assert "creditsync is running with development keys" in server.output()
        assert (tmp_path / ".creditsync-dev" / "wix-private.pem").exists()

        purchase = _cli(tmp_path, "dev", "webhook", "PaidPlanPurchased", "--instance",
                        "demo-1", "--product", "pro").stdout.strip()
        first = httpx.post(hook, content=purchase)
        again = httpx.post(hook, content=purchase)
        token = _cli(tmp_path, "dev", "token", "--instance", "demo-1").stdout.strip()
        credits = httpx.get(f"{server.url}/api/billing/credits",
                            headers={"Authorization": f"Bearer {token}"}).json()
        forged = _cli(tmp_path, "dev", "webhook", "PaidPlanPurchased", "--instance", "demo-1",
                      "--product", "scale", "--forge", "--post", hook, check=False)
        anonymous = _cli(tmp_path, "dev", "token", "--instance", "demo-1",
                         "--anonymous").stdout.strip()
        refused = httpx.get(f"{server.url}/api/billing/credits",
                            headers={"Authorization": f"Bearer {anonymous}"})
    finally:
        server.stop()

    assert first.json()["status"] == "applied"
    assert again.json() == {"status": "duplicate", "eventId": first.json()["eventId"]}
    assert (credits["plan"], credits["creditsTotal"], credits["creditsRemaining"]) == (
        "pro", 5000, 5000)
    assert forged.returncode == 1
    assert forged.stdout.startswith('401 {"error":"bad_signature"')
    assert refused.json()["error"] == "anonymous_token"


def test_dev_commands_need_the_dev_keys(tmp_path: Path) -> None:
    result = _cli(tmp_path, "dev", "token", "--instance", "x", check=False)
    assert result.returncode == 1
    assert "run `creditsync run --dev` there first" in result.stderr


# -- a crash while webhooks stream in -------------------------------------------------------


@contextlib.contextmanager
def _running(url: str, keys: devkeys.DevKeys, log: Path) -> Iterator[Server]:
    server = Server(["run"], server_env(url, keys, CREDITSYNC_SYNC_INTERVAL="1h"), log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_event_answered_200_survives_a_crash_and_is_applied(
    request: pytest.FixtureRequest, keys: devkeys.DevKeys, tmp_path: Path, backend: str,
) -> None:
    instances, changes, senders = 12, 12, 4
    now = dt.datetime.now(dt.UTC)
    base = now - dt.timedelta(hours=1)
    streams: list[list[tuple[str, str | None, str]]] = [[] for _ in range(senders)]
    for n in range(instances):
        inst = f"crash-{n:02d}"
        stream = streams[n % senders]
        stream.append((inst, None, wix.sign_event(keys.private_key, "AppInstalled", inst, {},
                                                  now=now - dt.timedelta(hours=2),
                                                  ttl=dt.timedelta(hours=3))))
        for k in range(changes):
            plan = PLANS[(n + k) % len(PLANS)]
            at = base + dt.timedelta(seconds=k)
            fields = wix.event_fields("PaidPlanChanged", product=plan, at=at)
            stream.append((inst, plan, wix.sign_event(keys.private_key, "PaidPlanChanged",
                                                      inst, fields, now=now)))
    total = sum(len(s) for s in streams)
    answered: list[tuple[str, str | None, dict[str, Any]]] = []
    failures: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    with fresh_database(request, backend, tmp_path) as url:
        server = Server(["run"], server_env(url, keys, CREDITSYNC_SYNC_INTERVAL="1h"),
                        tmp_path / "first.log")
        server.wait_ready()

        def send(stream: list[tuple[str, str | None, str]]) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for inst, plan, body in stream:
                    try:
                        response = client.post(HOOK, content=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(type(exc).__name__)
                        return
                    with lock:
                        if response.status_code == 200:
                            answered.append((inst, plan, response.json()))
                        if len(answered) >= total // 2:
                            enough.set()

        threads = [threading.Thread(target=send, args=(s,)) for s in streams]
        try:
            for thread in threads:
                thread.start()
            assert enough.wait(120), server.output()
            server.kill()  # SIGKILL mid-stream: no shutdown, no flush
            for thread in threads:
                thread.join(30)
        finally:
            server.stop()
        assert failures, "the crash should have cut the stream"
        assert len(answered) < total

        with _running(url, keys, tmp_path / "second.log") as second:  # retries the stored
            engine = database.create(url)
            try:
                _wait_all_applied(engine)
                events = _events(engine)
                drifted = list(drift.scan(engine))
                plans_now = _plans(engine)
            finally:
                engine.dispose()
            log = second.output()

    applied_at: dict[str, list[dt.datetime]] = {}
    for inst, status, _product, at in events.values():
        if status == "applied":
            applied_at.setdefault(inst, []).append(at)

    def decided(event_id: str) -> bool:
        """Applied; or stale because a newer event for its instance was applied first (an
        event answered `pending` under load is retried after its successor landed)."""
        inst, status, _product, at = events[event_id]
        return status == "applied" or (
            status == "stale" and any(t > at for t in applied_at.get(inst, [])))

    for inst, _plan, answer in answered:
        assert answer["eventId"] in events, (inst, answer, "answered 200 but not stored")
        assert decided(answer["eventId"]), (inst, answer, events[answer["eventId"]], log)
    assert not drifted, (drifted, log)
    newest: dict[str, tuple[dt.datetime, str]] = {}
    for event_id, (inst, _status, product, at) in events.items():
        assert decided(event_id), (event_id, events[event_id], log)
        if product is not None and (inst not in newest or at > newest[inst][0]):
            newest[inst] = (at, product)
    for inst, (_, product) in newest.items():
        assert plans_now[inst] == product, inst


def _events(engine: sa.Engine) -> dict[str, tuple[str, str, str | None, dt.datetime]]:
    e = models.WEBHOOK_EVENTS
    with database.read(engine) as conn:
        return {row.id: (row.instance_id, row.status, row.product_id, row.operation_time)
                for row in conn.execute(sa.select(e))}


def _plans(engine: sa.Engine) -> dict[str, str]:
    i = models.INSTANCES
    with database.read(engine) as conn:
        return {row.instance_id: row.plan_id for row in conn.execute(sa.select(i))}


def _wait_all_applied(engine: sa.Engine, timeout: float = 60) -> None:
    """Every stored event decided (the assertions after it say how)."""
    waiting.wait_for("every stored event decided", lambda: {
        status for _, status, _, _ in _events(engine).values()} <= {"applied", "stale"},
        timeout=timeout)
