"""The CreditSync daemon: each run's status lands at once, in one guarded merge patch; the
loop reacts to plan changes promptly and stops as soon as it is told to."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from creditsync import grants, instances
from creditsync_operator import schedule, specs, state, sync
from tests.core.helpers import RESET
from tests.operator import helpers
from tests.operator.helpers import EARLIER, FakeStatusApi, Stopped
from tests.support.times import T0

NOW = "2026-01-10T12:00:00Z"
SPEC = specs.SyncSpec(interval=dt.timedelta(hours=1))


def raw_sync(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "creditsync.io/v1alpha1", "kind": "CreditSync",
            "metadata": {"namespace": "ns", "name": "cs", "uid": "u-1", "generation": 3,
                         "resourceVersion": "7"},
            "spec": {"interval": "1h", **spec}, "status": {}}


def shared_with(api: FakeStatusApi, pool: concurrent.futures.Executor) -> state.Shared:
    return state.Shared(factory=None, executor=pool, connect=lambda: api)  # type: ignore[arg-type]


def test_a_run_writes_its_whole_status_in_one_guarded_patch(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared = shared_with(api, pool)
    loop = schedule.LoopState()
    monkeypatch.setattr(sync, "run_once", lambda *_: sync.Outcome(
        helpers.summary(scanned=200, drifted=0, trigger="startup"), {"pending": 2}))
    asyncio.run(sync.act(shared, loop, kopf.Body(raw_sync()),
                         schedule.Decision("run", "startup", SPEC)))
    assert api.writes == [("creditsyncs", "ns", "cs", {
        "instances": 200, "drifted": 0, "missingPlans": [],
        "lastRun": {"runId": "run-1", "trigger": "startup", "dryRun": False,
                    "startedAt": NOW, "scanned": 200, "drifted": 0, "repaired": 0,
                    "failed": 0, "planMissing": 0, "scope": "all", "missed": None,
                    "duration": "0.250s"},
        "webhookBacklog": {"pending": 2, "quarantined": 0, "failed": 0},
        "lastSyncTime": NOW, "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Synced",
             "message": "startup run: scanned 200, repaired 0 of 0 drifted",
             "lastTransitionTime": NOW, "observedGeneration": 3},
            {"type": "Converged", "status": "True", "reason": "InSync",
             "message": "all 200 instances match their plans", "lastTransitionTime": NOW,
             "observedGeneration": 3},
            {"type": "Degraded", "status": "False", "reason": "AsExpected",
             "lastTransitionTime": NOW, "observedGeneration": 3}],
    }, "7")]
    assert posted == []  # nothing repaired, never degraded
    assert loop.last_run is not None
    assert loop.backlog == {"pending": 2}


def test_a_write_refused_for_a_changed_object_is_computed_again_from_the_newer_body(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    raw = raw_sync()
    api = FakeStatusApi(raw, conflicts=1)
    monkeypatch.setattr(sync, "WRITE_RETRY", 0.0)
    written = asyncio.run(sync.write_status(
        shared_with(api, pool), kopf.Body(raw), {"drifted": 0},
        [sync.Condition("Ready", "True", "Synced", "again")], generation=3, now=T0))
    assert written
    assert [(w[3]["conditions"][0]["lastTransitionTime"], w[4]) for w in api.writes] == [
        (NOW, "7"),  # from the body as it was: no Ready yet
        (EARLIER, "8"),  # from the newer body: Ready was already True, its time stays
    ]


def test_a_failed_run_reports_degraded_once_and_is_retried_after_its_backoff(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared = shared_with(api, pool)
    loop = schedule.LoopState()

    def fail(*_: object) -> sync.Outcome:
        raise RuntimeError("boom")

    monkeypatch.setattr(sync, "run_once", fail)
    asyncio.run(sync.act(shared, loop, kopf.Body(raw_sync()),
                         schedule.Decision("run", "timer", SPEC)))
    [(_, _, _, status, _)] = api.writes
    assert [(c["type"], c["status"], c["reason"], c["message"])
            for c in status["conditions"]] == [
        ("Ready", "False", "SyncFailed", "boom (retrying in 1s)"),
        ("Converged", "Unknown", "SyncFailed", "no run could complete"),
        ("Degraded", "True", "SyncFailed", "boom (retrying in 1s)")]
    assert posted == [("Warning", "Degraded", "SyncFailed: boom (retrying in 1s)")]
    assert (loop.retry_trigger, loop.failures) == ("timer", 1)


def test_the_daemon_runs_at_start_up_and_on_a_plan_change_and_stops_at_once(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared = shared_with(api, pool)
    monkeypatch.setattr(sync, "run_once", lambda _shared, _spec, trigger, _source: (
        sync.Outcome(helpers.summary(trigger=trigger), {})))
    monkeypatch.setattr(sync, "POLL", 0.01)

    def triggers() -> list[str]:
        return [w[3]["lastRun"]["trigger"] for w in api.writes]

    async def until(done: Any) -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out; writes: {triggers()}")

    async def scenario() -> float:
        body, memo, stopped = kopf.Body(raw_sync()), kopf.Memo(), Stopped()
        memo[state.SHARED] = shared
        daemon = asyncio.create_task(sync.converge(
            body=body, spec=body.spec, meta=body.metadata, memo=memo,
            stopped=stopped))  # type: ignore[arg-type]
        await until(lambda: triggers() == ["startup"])
        assert shared.live_loops() == 1
        shared.plan_changed()
        await until(lambda: triggers() == ["startup", "plan_change"])
        loop = asyncio.get_running_loop()
        asked = loop.time()
        stopped.event.set()
        await asyncio.wait_for(daemon, 1.0)
        return loop.time() - asked

    assert asyncio.run(scenario()) < 0.5
    assert triggers() == ["startup", "plan_change"]  # an hour-long interval: nothing more


def test_between_runs_the_loop_expires_due_grants(
    engine: Any, pool: concurrent.futures.Executor,
) -> None:
    """The daemon's frequent step (inbox retries) also ends grants whose expiry has come."""
    instances.provision(engine, "g", now=T0, pol=RESET)
    due = grants.create(engine, "g", 40, reason="promo", now=T0,
                        expires_at=T0 + dt.timedelta(hours=1)).grant  # long past by now
    built = SimpleNamespace(engine=engine)  # the one part of the factory the step uses
    shared = state.Shared(factory=built, executor=pool,  # type: ignore[arg-type]
                          connect=FakeStatusApi)
    asyncio.run(sync._frequent(shared))
    with engine.connect() as conn:
        assert [g.status for g in grants.listing_in(conn, "g")] == ["expired"]
    assert due.status == "live"
