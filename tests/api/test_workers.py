"""Several API worker processes: `creditsync run --workers 2` still converges in one loop,
serialises each instance across processes (SQLite and PostgreSQL), and `/metrics` counts
every worker's requests."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import itertools
import re
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from creditsync import drift
from creditsync.storage import database, models
from creditsync_api import devkeys, tokens, wix
from tests.api.conftest import HOOK, Server, server_env
from tests.support import waiting
from tests.support.database import fresh_database
from tests.support.ledger import assert_ledger_replays


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_serialise_each_instance_and_one_loop_converges(
    request: pytest.FixtureRequest, keys: devkeys.DevKeys, tmp_path: Path, backend: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    with fresh_database(request, backend, tmp_path) as url:
        server = Server(["run", "--workers", "2"],
                        server_env(url, keys, CREDITSYNC_SYNC_INTERVAL="1s"), tmp_path / "w.log")
        engine = database.create(url)
        try:
            server.wait_ready()
            waiting.wait_for("two worker processes", lambda: len(set(re.findall(
                r"Started server process \[(\d+)\]", server.output()))) == 2, timeout=30)
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for name in ("shared", "other"):
                    install = wix.sign_event(keys.private_key, "AppInstalled", name, {},
                                             now=now - dt.timedelta(minutes=1))
                    assert client.post(HOOK, content=install).status_code == 200
                buy = wix.sign_event(keys.private_key, "PaidPlanPurchased", "shared",
                                     wix.event_fields("PaidPlanPurchased", product="pro",
                                                      at=now), now=now)
                assert client.post(HOOK, content=buy).json()["status"] == "applied"
            auth = {"Authorization": f"Bearer {tokens.sign(keys.app_secret, 'shared', now=now)}"}

            def consume(n: int) -> int:
                with httpx.Client(base_url=server.url, timeout=20) as client:
                    return client.post("/api/credits/consume", headers=auth, json={
                        "amount": 7, "idempotencyKey": f"k{n}-{uuid.uuid4().hex}"}).status_code

            # many keep-alive-less requests: the two workers both take some
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(consume, range(80)))
            assert codes == [200] * 80
            inst = models.INSTANCES
            with database.read(engine) as conn:
                used, plan = conn.execute(sa.select(inst.c.credits_used_month, inst.c.plan_id)
                                          .where(inst.c.instance_id == "shared")).one()
            assert (used, plan) == (560, "pro")  # no consume lost to another worker's
            assert_ledger_replays(engine)

            text = httpx.get(f"{server.url}/metrics", timeout=5).text
            assert 'creditsync_consume_total{outcome="consumed"} 80.0' in text, text[:3000]
            assert re.search(r'creditsync_webhooks_total\{event_type="AppInstalled",'
                             r'outcome="applied"\} 2\.0', text)

            # one convergence loop: a hand edit waits for the full scan, every tick is one row
            runs = models.SYNC_RUNS
            ticks = waiting.wait_for("ticks", lambda: _count(engine, "tick") >= 3, timeout=20)
            assert ticks
            with database.read(engine) as conn:
                starts = conn.execute(sa.select(runs.c.started_at).where(
                    runs.c.trigger == "tick").order_by(runs.c.started_at)).scalars().all()
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
            assert all(gap >= 0.9 for gap in gaps), gaps  # not one loop per worker
            assert _count(engine, "startup") == 1
            assert list(drift.scan(engine)) == []
        finally:
            server.stop()
            engine.dispose()


def _count(engine: sa.Engine, trigger: str) -> int:
    runs = models.SYNC_RUNS
    with database.read(engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(runs)
                                .where(runs.c.trigger == trigger)).scalar_one())
