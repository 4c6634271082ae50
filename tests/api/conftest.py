"""Fixtures for the API: keys, apps on SQLite and PostgreSQL, and real uvicorn servers.

`api` runs a test four ways: TestClient and a real `creditsync api` server on 127.0.0.1,
each on SQLite and PostgreSQL. TestClient apps get a fresh database and a clock the test
can move (`api.clock`); the servers are shared per backend for the session, so every test
works on its own instance ids (`api.instance(...)`), never on global counts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from creditsync import clock, config, inbox
from creditsync.storage import database, models
from creditsync_api import deps, devkeys, main, tokens, wix
from tests.support import waiting
from tests.support.database import drop_pg_database, fresh_database, new_pg_database, prepare
from tests.support.postgres import PostgresCluster, free_port

HOOK = "/api/webhooks/billing"


def ms(moment: dt.datetime) -> dt.datetime:
    """`moment` at the marketplace's millisecond precision."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso(moment: dt.datetime) -> str:
    """A time as the API writes it."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> devkeys.DevKeys:
    found, _ = devkeys.ensure(tmp_path_factory.mktemp("devkeys"))
    return found


@pytest.fixture(scope="session")
def wrong_key() -> rsa.RSAPrivateKey:
    return devkeys.generate_private_key()


def settings_for(url: str, keys: devkeys.DevKeys, **overrides: Any) -> config.Settings:
    return keys.apply(config.Settings(database_url=url, **overrides))


def server_env(url: str, keys: devkeys.DevKeys, **extra: str) -> dict[str, str]:
    return {**os.environ, "CREDITSYNC_DATABASE_URL": url,
            "CREDITSYNC_WIX_PUBLIC_KEY": keys.public_pem, "CREDITSYNC_APP_SECRET": keys.app_secret,
            "CREDITSYNC_ADMIN_TOKEN": keys.admin_token, **extra}


CLI = [sys.executable, "-m", "creditsync.cli.main", "--log-json"]


class Server:
    """A `creditsync` server subprocess on 127.0.0.1:<free port>, its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._handle = log.open("ab")
        if args[0] in ("api", "run") and "--workers" not in args:
            # one process per server: the suite starts dozens of them on two cores
            # (`tests/api/test_workers.py` runs several, and `run --dev` keeps the default)
            args = [*args, "--workers", "1"] if "--dev" not in args else args
        self.process = subprocess.Popen(
            [*CLI, *args, "--port", str(self.port)], env=env, cwd=cwd, stdout=self._handle,
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.output()}")
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

        waiting.wait_for("the server to answer /healthz", up, timeout=timeout, every=0.1,
                         ignore=(httpx.HTTPError,), logs=self.output)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing: a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._handle.close()


@dataclass
class Clock:
    """The TestClient apps' clock: real time unless a test sets or moves it."""

    fixed: dt.datetime | None = None

    def now(self) -> dt.datetime:
        return self.fixed or clock.utcnow()

    def set(self, moment: dt.datetime) -> None:
        self.fixed = moment

    def advance(self, delta: dt.timedelta) -> None:
        self.fixed = self.now() + delta


@dataclass
class Api:
    """One way to reach the API, with the signing helpers a test needs."""

    http: Any  # TestClient or httpx.Client
    engine: Engine
    keys: devkeys.DevKeys
    backend: str
    transport: str
    clock: Clock = field(default_factory=Clock)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}-")

    def instance(self, name: str = "a") -> str:
        return f"{self.prefix}{name}"

    def now(self) -> dt.datetime:
        return self.clock.now()

    # -- webhooks --
    def webhook(self, event_type: str, instance_id: str, *, product: str | None = None,
                at: dt.datetime | None = None, expires: dt.datetime | None = None,
                previous: str | None = None, key: rsa.RSAPrivateKey | None = None,
                signed_at: dt.datetime | None = None,
                ttl: dt.timedelta = dt.timedelta(minutes=5)) -> str:
        fields = wix.event_fields(event_type, product=product, at=at, expires=expires,
                                  previous_product=previous)
        return wix.sign_event(key or self.keys.private_key, event_type, instance_id, fields,
                              now=signed_at or self.now(), ttl=ttl)

    def post(self, body: str | bytes) -> Any:
        return self.http.post(HOOK, content=body, headers={"Content-Type": "text/plain"})

    def send(self, event_type: str, instance_id: str, **kwargs: Any) -> dict[str, Any]:
        """Sign and post; assert 200; return the answer, with the event's decided status.

        Within the webhook's 0.8 s budget the answer says how the event was decided; a
        starved process (a busy machine, a CPU-bound thread holding the GIL, a full garbage
        collection) can push the apply past it, and the answer is then `pending` while the
        apply goes on (in its worker thread, or the retry loop's). That is the route's
        contract, tested in test_operations with `post`; the tests that use `send` are
        about the decision, so a `pending` answer is followed to its end here. These apps run
        no retry loop (the operator or `run` does, in production): an apply that never got
        its thread within the budget is retried here, as the loop would."""
        response = self.post(self.webhook(event_type, instance_id, **kwargs))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        if answer["status"] == "pending":
            def decided() -> bool:
                inbox.retry_due(self.engine, now=self.now())
                return self.event_status(instance_id, answer["eventId"]) != "pending"

            waiting.wait_for(f"{event_type} {answer['eventId']} decided", decided, timeout=15)
            answer["status"] = self.event_status(instance_id, answer["eventId"])
        return answer

    def event_status(self, instance_id: str, event_id: str) -> str:
        return next(str(e.status) for e in self.inbox(instance_id) if e.id == event_id)

    def install(self, instance_id: str) -> None:
        """Set-up: the app installed, its event applied."""
        answer = self.send("AppInstalled", instance_id)
        assert answer["status"] == "applied", answer

    def buy(self, instance_id: str, product: str, at: dt.datetime) -> dict[str, Any]:
        return self.send("PaidPlanPurchased", instance_id, product=product, at=at)

    # -- instance tokens and admin --
    def token(self, instance_id: str, **kwargs: Any) -> str:
        kwargs.setdefault("now", self.now())
        return tokens.sign(self.keys.app_secret, instance_id, **kwargs)

    def auth(self, instance_id: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(instance_id, **kwargs)}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.admin_token}"}

    def credits(self, instance_id: str) -> dict[str, Any]:
        response = self.http.get("/api/billing/credits", headers=self.auth(instance_id))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    # -- the database, for what the API does not show --
    def inbox(self, instance_id: str) -> list[sa.Row[Any]]:
        e = models.WEBHOOK_EVENTS
        with database.read(self.engine) as conn:
            return list(conn.execute(sa.select(e).where(e.c.instance_id == instance_id)
                                     .order_by(e.c.received_at, e.c.id)))

    def ledger(self, instance_id: str) -> list[sa.Row[Any]]:
        ledger = models.LEDGER
        with database.read(self.engine) as conn:
            return list(conn.execute(sa.select(ledger).where(ledger.c.instance_id == instance_id)
                                     .order_by(ledger.c.id)))

    def execute(self, statement: sa.Executable) -> None:
        with database.write(self.engine) as conn:
            conn.execute(statement)


@contextlib.contextmanager
def local_app(url: str, keys: devkeys.DevKeys, backend: str,
              **overrides: Any) -> Iterator[Api]:
    """A TestClient on a fresh app, with the test's clock."""
    engine = database.create(url)
    clock = Clock()
    app = main.create_app(settings_for(url, keys, **overrides))
    app.dependency_overrides[deps.get_now] = clock.now
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Api(client, engine, keys, backend, "testclient", clock)
    finally:
        engine.dispose()


def _drop_quietly(cluster: PostgresCluster, name: str) -> None:
    # `pg` may be torn down first (it was set up after this session fixture): then the
    # cluster and its databases are gone anyway
    with contextlib.suppress(sa.exc.OperationalError):
        drop_pg_database(cluster, name)


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest, keys: devkeys.DevKeys,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Server, str]]]:
    """`creditsync api` per backend, started on first use, stopped at the end."""
    cleanup: list[Any] = []

    class Lazy(dict[str, tuple[Server, str]]):
        def __missing__(self, backend: str) -> tuple[Server, str]:
            root = tmp_path_factory.mktemp(f"server-{backend}")
            if backend == "sqlite":
                url = f"sqlite:///{root}/creditsync.db"
                prepare(url)
            else:
                cluster: PostgresCluster = request.getfixturevalue("pg")
                name = new_pg_database(cluster)
                url = cluster.url(name)
                cleanup.append(lambda: _drop_quietly(cluster, name))
            server = Server(["api"], server_env(url, keys), root / "server.log")
            cleanup.insert(0, server.stop)
            server.wait_ready()
            self[backend] = (server, url)
            return self[backend]

    lazy = Lazy()
    try:
        yield lazy
    finally:
        for step in cleanup:
            step()


@pytest.fixture(params=[("sqlite", "testclient"), ("postgres", "testclient"),
                        ("sqlite", "uvicorn"), ("postgres", "uvicorn")],
                ids=["sqlite-testclient", "postgres-testclient", "sqlite-uvicorn",
                     "postgres-uvicorn"])
def api(request: pytest.FixtureRequest, keys: devkeys.DevKeys, tmp_path: Path) -> Iterator[Api]:
    backend, transport = request.param
    if transport == "testclient":
        with fresh_database(request, backend, tmp_path) as url, \
                local_app(url, keys, backend) as found:
            yield found
        return
    server, url = request.getfixturevalue("servers")[backend]
    engine = database.create(url)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Api(client, engine, keys, backend, "uvicorn")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def local_api(request: pytest.FixtureRequest, keys: devkeys.DevKeys,
              tmp_path: Path) -> Iterator[Api]:
    """TestClient only: for tests that move the clock or patch the core."""
    with fresh_database(request, request.param, tmp_path) as url, \
            local_app(url, keys, request.param) as found:
        yield found
