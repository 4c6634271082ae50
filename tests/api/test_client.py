"""`creditsync.client` against a real `creditsync api` server (uvicorn) on SQLite and
PostgreSQL: typed answers, errors as exceptions, the reserve context manager, and retries
that never charge twice."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import client, clock, instances, keys
from creditsync.storage import database, models
from tests.api.conftest import Server
from tests.support.proxy import dropping_proxy


@dataclass
class Backend:
    server: Server
    engine: Engine
    key: str

    def instance(self) -> str:
        name = f"cl-{uuid.uuid4().hex[:10]}"
        instances.provision(self.engine, name, now=clock.utcnow())
        return name

    def usage_rows(self, instance_id: str) -> int:
        ledger = models.LEDGER
        with database.read(self.engine) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(ledger).where(
                ledger.c.instance_id == instance_id, ledger.c.kind == "usage")).scalar_one())


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    server, url = request.getfixturevalue("servers")[request.param]
    engine = database.create(url)
    created = keys.create(engine, "client tests", ["credits:read", "credits:consume"],
                          now=clock.utcnow())
    try:
        yield Backend(server, engine, created.key)
    finally:
        engine.dispose()


def test_consume_credits_and_errors(backend: Backend) -> None:
    inst = backend.instance()
    with client.Client(backend.server.url, backend.key) as credits:
        spent = credits.consume(inst, 30, "job-1")
        assert (spent.amount, spent.credits_remaining, spent.replayed) == (30, 70, False)
        assert credits.consume(inst, 30, "job-1").replayed
        with pytest.raises(client.IdempotencyConflict):
            credits.consume(inst, 31, "job-1")
        with pytest.raises(client.InsufficientCredits) as short:
            credits.consume(inst, 71, "job-2")
        assert (short.value.remaining, short.value.requested, short.value.status) == (
            70, 71, 402)
        found = credits.credits(inst)
        assert (found.credits_used, found.credits_remaining, found.credits_held) == (30, 70, 0)
        with pytest.raises(client.NotFound, match="provision"):
            credits.credits("cl-nobody")
    with client.Client(backend.server.url, "csk_nope") as wrong, \
            pytest.raises(client.Unauthorized):
        wrong.credits(inst)


def test_reserve_commits_on_success_and_releases_on_error(backend: Backend) -> None:
    inst = backend.instance()
    with client.Client(backend.server.url, backend.key) as credits:
        with credits.reserve(inst, 40, "render-1") as hold:
            assert credits.credits(inst).credits_held == 40
            hold.charge(25)
        assert (credits.credits(inst).credits_used, credits.credits(inst).credits_held) == (
            25, 0)
        seen: list[int] = []

        def job() -> None:
            with credits.reserve(inst, 50, "render-2"):
                seen.append(credits.credits(inst).credits_remaining)
                raise RuntimeError("the job failed")

        with pytest.raises(RuntimeError, match="the job failed"):
            job()
        assert seen == [25]
        found = credits.credits(inst)
        assert (found.credits_used, found.credits_held, found.credits_remaining) == (25, 0, 75)
        with credits.reserve(inst, 10, "render-3"):
            pass  # commits everything held
        assert credits.credits(inst).credits_used == 35
        with pytest.raises(client.InsufficientCredits), credits.reserve(inst, 66, "big"):
            pass
        held = credits.hold(inst, 5, "manual")
        with pytest.raises(client.InvalidRequest, match="commit_exceeds_hold"):
            credits.commit(held.id, 6)
        assert credits.release(held.id).status == "released"
        with pytest.raises(client.Conflict, match="reservation_released"):
            credits.commit(held.id)


def test_the_async_client_does_the_same(backend: Backend) -> None:
    inst = backend.instance()

    async def scenario() -> None:
        async with client.AsyncClient(backend.server.url, backend.key) as credits:
            assert (await credits.consume(inst, 10, "a")).credits_remaining == 90
            async with credits.reserve(inst, 20, "b") as hold:
                hold.charge(5)
            with pytest.raises(ValueError, match="boom"):
                async with credits.reserve(inst, 20, "c"):
                    raise ValueError("boom")
            found = await credits.credits(inst)
            assert (found.credits_used, found.credits_held) == (15, 0)
            with pytest.raises(client.InsufficientCredits):
                await credits.consume(inst, 86, "d")

    asyncio.run(scenario())


def test_a_retry_after_a_dropped_connection_charges_once(backend: Backend) -> None:
    inst = backend.instance()
    with dropping_proxy(backend.server.port, drop=1) as proxy, \
            client.Client(proxy.url, backend.key, backoff=0.05) as credits:
        spent = credits.consume(inst, 10, "render-7f3a")
        assert proxy.dropped == 1
    assert (spent.replayed, spent.credits_remaining) == (True, 90)
    assert backend.usage_rows(inst) == 1
    assert instances.credits(backend.engine, inst, now=clock.utcnow()).credits_used == 10


def test_a_generated_key_is_kept_across_retries(backend: Backend) -> None:
    inst = backend.instance()

    async def scenario() -> client.Consumption:
        async with client.AsyncClient(proxy.url, backend.key, backoff=0.05) as credits:
            return await credits.consume(inst, 10)

    with dropping_proxy(backend.server.port, drop=2) as proxy:
        spent = asyncio.run(scenario())
        assert proxy.dropped == 2
    assert spent.replayed
    assert backend.usage_rows(inst) == 1


def test_503_and_429_are_retried_with_the_same_key(backend: Backend) -> None:
    inst = backend.instance()
    with dropping_proxy(backend.server.port, drop=0,
                        refuse=["503 Service Unavailable", "429 Too Many Requests"]) as proxy, \
            client.Client(proxy.url, backend.key, backoff=0.01) as credits:
        spent = credits.consume(inst, 10)
        assert proxy.refuse == []
    assert (spent.replayed, spent.credits_remaining) == (False, 90)
    assert backend.usage_rows(inst) == 1
    with dropping_proxy(backend.server.port, drop=0, refuse=["503 Service Unavailable"] * 3
                        ) as proxy, client.Client(proxy.url, backend.key, retries=2,
                                                  backoff=0.01) as credits, \
            pytest.raises(client.Unavailable) as failed:
        credits.consume(inst, 10)
    assert (failed.value.status, failed.value.code) == (503, "unavailable")
    assert backend.usage_rows(inst) == 1


def test_retries_run_out_with_advice(backend: Backend) -> None:
    with client.Client("http://127.0.0.1:9", backend.key, retries=1,
                       backoff=0.01) as credits, \
            pytest.raises(client.Unavailable) as failed:
        credits.credits("anything")
    assert failed.value.retry_after > 0
    assert isinstance(failed.value.__cause__, httpx.TransportError)


def test_the_readme_example_runs(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Credits for the app's own backend", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    assert len(blocks[0].strip().splitlines()) <= 14
    inst = backend.instance()
    told: list[str] = []
    monkeypatch.setenv("CREDITSYNC_KEY", backend.key)
    code = blocks[0].replace("https://credits.example.com", backend.server.url)
    exec(code, {"instance_id": inst, "image": SimpleNamespace(id=1),  # noqa: S102
                "job": SimpleNamespace(id=2), "render": lambda job: 42,
                "tell_the_user": told.append})
    found = instances.credits(backend.engine, inst, now=clock.utcnow())
    assert (found.credits_used, found.credits_held, told) == (47, 0, [])
