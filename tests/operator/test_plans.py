"""The CreditPlan instances daemon writes `status.instances` only when the count differs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import kopf
import pytest

from creditsync_operator import plans, state
from tests.operator.helpers import FakeStatusApi, Stopped


def test_the_instance_count_is_written_only_when_it_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plans, "POLL", 0.01)
    api = FakeStatusApi()

    async def look(raw_status: dict[str, int]) -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            shared = state.Shared(factory=None, executor=pool,  # type: ignore[arg-type]
                                  connect=lambda: api)
            shared.counts, shared.counts_at = {"pro": 20}, time.monotonic()  # fresh counts
            memo, stopped = kopf.Memo(), Stopped()
            memo[state.SHARED] = shared
            body = kopf.Body({"metadata": {"namespace": "ns", "name": "pro"},
                              "status": raw_status})
            daemon = asyncio.create_task(plans.instances(
                name="pro", namespace="ns", body=body, memo=memo,
                stopped=stopped))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            stopped.event.set()
            await asyncio.wait_for(daemon, 1.0)

    asyncio.run(look({"instances": 20}))
    assert api.writes == []
    asyncio.run(look({"instances": 5}))
    assert api.writes[0] == ("creditplans", "ns", "pro", {"instances": 20}, None)
