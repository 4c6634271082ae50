"""The operator's `deliver` daemon: events to the app go out through the same
`outbox.deliver_due` as `creditsync run`, signed, to a real receiver; a suspended CreditSync
pauses delivery; without a URL the daemon ends at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from sqlalchemy.engine import Engine

from creditsync import config, delivery, factory, instances, runner, usage
from creditsync_operator import deliver, state
from tests.core.helpers import RESET
from tests.operator.helpers import FakeStatusApi, Stopped
from tests.support.receiver import AppReceiver
from tests.support.times import T0


@pytest.fixture
def receiver() -> Iterator[AppReceiver]:
    with AppReceiver() as app:
        yield app


def shared_for(engine: Engine, pool: concurrent.futures.Executor,
               client: delivery.Client | None) -> state.Shared:
    made = factory.Factory(config.Settings(), given_engine=engine)
    return state.Shared(made, pool, connect=lambda: FakeStatusApi(), deliverer=client)


def raw(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "creditsync.io/v1alpha1", "kind": "CreditSync",
            "metadata": {"namespace": "ns", "name": "cs", "uid": "u-1"},
            "spec": {"interval": "1h", **spec}}


def run_daemon(shared: state.Shared, body: dict[str, Any], until: Callable[[], bool]) -> bool:
    """Run the daemon until `until()` (or 3 s); whether it ended by itself first."""
    async def main() -> bool:
        stopped = Stopped()
        task = asyncio.create_task(deliver.deliver(
            spec=kopf.Spec(body), memo=kopf.Memo({state.SHARED: shared}),
            stopped=stopped))  # type: ignore[arg-type]
        for _ in range(300):
            if until() or task.done():
                break
            await asyncio.sleep(0.01)
        ended = task.done()
        stopped.event.set()
        await asyncio.wait_for(task, 5)
        return ended

    return asyncio.run(main())


def spend(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.consume(engine, "u", 100, "all", now=T0, pol=RESET)  # low 20%, low 5%, depleted


def test_the_daemon_delivers_signed_events(
    engine: Engine, pool: concurrent.futures.Executor, receiver: AppReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "DELIVER_EVERY", dt.timedelta(milliseconds=10))
    spend(engine)
    client = delivery.Client(receiver.url, receiver.secret)
    try:
        run_daemon(shared_for(engine, pool, client), raw(), until=lambda: len(
            receiver.accepted) >= 3)
    finally:
        client.close()
    assert [a.payload["type"] for a in receiver.accepted if a.payload] == [
        "credits.low", "credits.low", "credits.depleted"]
    assert all(a.verified for a in receiver.attempts)


def test_a_suspended_creditsync_pauses_delivery(
    engine: Engine, pool: concurrent.futures.Executor, receiver: AppReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "DELIVER_EVERY", dt.timedelta(milliseconds=10))
    spend(engine)
    client = delivery.Client(receiver.url, receiver.secret)
    polls = iter(range(30))
    try:
        run_daemon(shared_for(engine, pool, client), raw(suspend=True),
                   until=lambda: next(polls, None) is None)
    finally:
        client.close()
    assert receiver.attempts == []


def test_without_a_url_the_daemon_ends_at_once(
    engine: Engine, pool: concurrent.futures.Executor,
) -> None:
    assert run_daemon(shared_for(engine, pool, None), raw(), until=lambda: False)
