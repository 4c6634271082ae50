"""The periodic marketplace audit in the operator: `lastAudit` after each batch, Degraded
`MarketplaceUnavailable` while no batch gets an answer (with the Event and alert of any
Degraded), and its sharing of the Degraded condition with the convergence loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from collections.abc import Callable
from typing import Any

import kopf
import pytest

from creditsync import alerts
from creditsync import audit as audits
from creditsync_operator import audit, schedule, specs, state, status, sync
from tests.operator import helpers
from tests.operator.helpers import FakeStatusApi, Stopped
from tests.support.times import T0

NOW = "2026-01-10T12:00:00Z"
DOWN = "the marketplace answered GET /apps/v1/instance with 503"
SPEC = specs.SyncSpec(interval=dt.timedelta(hours=1))


def raw_sync(conditions: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "creditsync.io/v1alpha1", "kind": "CreditSync",
            "metadata": {"namespace": "ns", "name": "cs", "uid": "u-1", "generation": 3,
                         "resourceVersion": "7"},
            "spec": {"interval": "1h", **spec}, "status": {"conditions": conditions or []}}


def report(checked: int = 0, errors: int = 0, disagreed: int = 0,
           healed: int = 0) -> audits.Report:
    return audits.Report(False, T0, checked=checked, disagreed=disagreed, healed=healed,
                         errors=errors,
                         failures=[(f"inst-{n}", DOWN) for n in range(errors)])


class Alerts:
    def __init__(self) -> None:
        self.sent: list[alerts.Alert] = []

    def send(self, alert: alerts.Alert) -> None:
        self.sent.append(alert)


def shared_with(api: FakeStatusApi, pool: concurrent.futures.Executor,
                sink: Alerts | None = None) -> state.Shared:
    return state.Shared(factory=None, executor=pool, connect=lambda: api,  # type: ignore[arg-type]
                        alerter=sink,  # type: ignore[arg-type]
                        marketplace=object())  # type: ignore[arg-type]


def degraded(write: tuple[str, str, str, dict[str, Any], str | None]) -> tuple[str, str]:
    [cond] = [c for c in write[3]["conditions"] if c["type"] == "Degraded"]
    return cond["status"], cond["reason"]


# ---- the status fields -------------------------------------------------------------------


def test_last_audit_has_the_batch_s_numbers() -> None:
    assert status.for_audit(report(checked=150, disagreed=3, healed=2, errors=1), now=T0) == {
        "lastAudit": {"time": NOW, "checked": 150, "disagreed": 3, "healed": 2, "errors": 1}}


def test_only_a_batch_without_any_answer_is_a_marketplace_failure() -> None:
    assert status.audit_failure(report(checked=149, errors=1)) is None  # one site's trouble
    assert status.audit_failure(report()) is None  # nothing was due
    message = status.audit_failure(report(errors=2))
    assert message == (
        f"the marketplace audit could not check any of 2 instance(s); inst-0: {DOWN}. Nothing "
        "was changed and the audit tries again on its own; if this persists, check the "
        "marketplace's status and CREDITSYNC_WIX_API_URL (for 401/403, CREDITSYNC_WIX_APP_ID "
        "and CREDITSYNC_APP_SECRET)")
    long = audits.Report(False, T0, errors=1, failures=[("inst", "x" * 2000)])
    assert len(status.audit_failure(long) or "") == status.MAX_MESSAGE


# ---- Degraded, shared with the convergence loop ------------------------------------------


def test_a_failed_batch_degrades_and_the_next_answer_recovers(
    pool: concurrent.futures.Executor, posted: list[tuple[str, str, str]],
) -> None:
    api, sink = FakeStatusApi(), Alerts()
    shared, loop = shared_with(api, pool, sink), schedule.LoopState()
    body = kopf.Body(raw_sync())
    asyncio.run(audit.report_batch(shared, loop, body, report(errors=4)))
    [write] = api.writes
    assert "observedGeneration" not in write[3]  # the convergence loop's to say
    assert write[3]["lastAudit"] == {"time": NOW, "checked": 0, "disagreed": 0, "healed": 0,
                                     "errors": 4}
    [cond] = write[3]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Degraded", "True", "MarketplaceUnavailable")
    assert cond["message"].startswith("the marketplace audit could not check any of 4 ")
    assert posted == [("Warning", "Degraded", f"MarketplaceUnavailable: {cond['message']}")]
    assert [a.key for a in sink.sent] == ["degraded"]
    assert "is degraded: MarketplaceUnavailable" in sink.sent[0].title

    asyncio.run(audit.report_batch(shared, loop, body, report(errors=4)))  # still down
    assert len(posted) == 1
    asyncio.run(audit.report_batch(shared, loop, body, report(checked=4)))
    assert degraded(api.writes[-1]) == ("False", "AsExpected")
    assert posted[1:] == [("Normal", "Recovered", "no longer MarketplaceUnavailable")]
    assert sink.sent[-1].key == "recovered"
    assert "the marketplace answered the last audit batch" in sink.sent[-1].text
    assert loop.marketplace is None


def test_a_good_run_keeps_the_marketplace_s_degraded(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared, loop = shared_with(api, pool), schedule.LoopState()
    asyncio.run(audit.report_batch(shared, loop, kopf.Body(raw_sync()), report(errors=1)))
    monkeypatch.setattr(sync, "run_once", lambda *_: sync.Outcome(helpers.summary(), {}))
    asyncio.run(sync.act(shared, loop, kopf.Body(raw_sync()),
                         schedule.Decision("run", "timer", SPEC)))
    assert degraded(api.writes[-1]) == ("True", "MarketplaceUnavailable")
    assert api.writes[-1][3]["observedGeneration"] == 3
    assert [p[1] for p in posted] == ["Degraded"]  # no Recovered in between


def test_the_audit_leaves_a_run_s_own_degraded_alone(
    pool: concurrent.futures.Executor, posted: list[tuple[str, str, str]],
) -> None:
    down = {"type": "Degraded", "status": "True", "reason": "DatabaseUnavailable",
            "message": "connection refused", "lastTransitionTime": NOW}
    api = FakeStatusApi()
    shared, loop = shared_with(api, pool), schedule.LoopState()
    body = kopf.Body(raw_sync([down]))
    for found in (report(errors=3), report(checked=3)):
        asyncio.run(audit.report_batch(shared, loop, body, found))
    assert [w[3]["conditions"] for w in api.writes] == [[down], [down]]
    assert posted == []


def test_a_restarted_operator_keeps_a_marketplace_degraded_until_an_answer(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    before = {"type": "Degraded", "status": "True", "reason": "MarketplaceUnavailable",
              "message": "no answer", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    api = FakeStatusApi()
    shared, loop = shared_with(api, pool), schedule.LoopState()
    monkeypatch.setattr(sync, "run_once", lambda *_: sync.Outcome(helpers.summary(), {}))
    asyncio.run(sync.act(shared, loop, kopf.Body(raw_sync([before])),
                         schedule.Decision("run", "startup", SPEC)))
    [cond] = [c for c in api.writes[-1][3]["conditions"] if c["type"] == "Degraded"]
    assert (cond["reason"], cond["message"], cond["lastTransitionTime"]) == (
        "MarketplaceUnavailable", "no answer", "2026-01-01T00:00:00Z")
    assert posted == []


# ---- the daemon ----------------------------------------------------------------------------


def run_daemon(shared: state.Shared, raw: dict[str, Any],
               until: Callable[[], bool], memo: kopf.Memo | None = None) -> None:
    async def main() -> None:
        stopped = Stopped()
        task = asyncio.create_task(audit.audit(
            body=kopf.Body(raw), spec=kopf.Spec(raw), memo=memo or kopf.Memo({
                state.SHARED: shared}), stopped=stopped))  # type: ignore[arg-type]
        for _ in range(500):
            if until() or task.done():
                break
            await asyncio.sleep(0.01)
        stopped.event.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_with_the_source_off_the_daemon_ends_at_once(pool: concurrent.futures.Executor) -> None:
    shared = shared_with(FakeStatusApi(), pool)
    shared.marketplace = None
    run_daemon(shared, raw_sync(), until=lambda: False)  # returns: the task is done


def test_the_daemon_audits_batches_while_due_on_the_spec_s_interval(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared = shared_with(api, pool)
    batches = [report(checked=150, disagreed=1, healed=1), report(checked=20), report()]
    asked: list[dt.timedelta] = []

    def batch(_shared: state.Shared, _client: object, interval: dt.timedelta,
              should_stop: Callable[[], bool]) -> audits.Report | None:
        assert should_stop() is False
        asked.append(interval)
        return batches.pop(0) if batches else None

    monkeypatch.setattr(audit, "_audit_batch", batch)
    monkeypatch.setattr(audit, "POLL", 0.01)
    run_daemon(shared, raw_sync(marketplaceAudit={"interval": "2s"}),
               until=lambda: len(asked) >= 3)
    assert asked == [dt.timedelta(seconds=2)] * 3  # the third found nothing due: it rests
    assert [w[3]["lastAudit"]["checked"] for w in api.writes] == [150, 20]  # nothing to say
    assert posted == []


@pytest.mark.parametrize("spec", [{"marketplaceAudit": {"interval": "0"}}, {"suspend": True},
                                  {"dryRun": True}, {"batchSize": 0}])
def test_no_audit_when_the_spec_says_so(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]], spec: dict[str, Any],
) -> None:
    api = FakeStatusApi()
    monkeypatch.setattr(audit, "_audit_batch", lambda *_: pytest.fail("audited"))
    monkeypatch.setattr(audit, "POLL", 0.01)
    polls = iter(range(20))
    run_daemon(shared_with(api, pool), raw_sync(**spec), until=lambda: next(polls, None) is None)
    assert api.writes == []


def test_turning_the_audit_off_clears_its_degraded(
    monkeypatch: pytest.MonkeyPatch, pool: concurrent.futures.Executor,
    posted: list[tuple[str, str, str]],
) -> None:
    api = FakeStatusApi()
    shared = shared_with(api, pool)
    memo = kopf.Memo({state.SHARED: shared})
    loop = state.loop_state(memo)
    asyncio.run(audit.report_batch(shared, loop, kopf.Body(raw_sync()), report(errors=1)))
    monkeypatch.setattr(audit, "POLL", 0.01)
    run_daemon(shared, raw_sync(marketplaceAudit={"interval": "0"}),
               until=lambda: len(api.writes) >= 2, memo=memo)
    assert degraded(api.writes[-1]) == ("False", "AsExpected")
    assert [p[1] for p in posted] == ["Degraded", "Recovered"]
    assert loop.marketplace is None
