"""The webhook's ingest service: store the event within a budget, apply it in what is left.

The marketplace waits 1.25 s for an answer. `Ingress.receive()` commits the event to the
inbox first (nothing is acknowledged before that), then applies it (subscription updated,
instance converged) within what is left of a 0.8 s budget. An apply that fails or runs over
leaves the event `pending` for the retry loop, and the answer is still its receipt: it is
stored. An event not stored within the budget raises `errors.DatabaseUnavailable`: the
marketplace retries, and finds it as a duplicate if the store did commit after all.

On PostgreSQL both steps run on the event loop (`storage.inbox_pg`: one pooled connection,
few round trips); on SQLite the blocking `inbox.store` and `inbox.process` run in worker
threads, at most as many at once as the engine has connections.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy.engine import Engine

from creditsync import enums, errors, inbox
from creditsync.storage import database, inbox_pg

BUDGET_S = 0.8  # seconds to store and apply; the marketplace waits 1.25 s in all


def _not_stored() -> errors.DatabaseUnavailable:
    return errors.DatabaseUnavailable(
        f"the event could not be stored within {BUDGET_S} s; nothing was acknowledged")


@dataclass
class Ingress:
    """What the webhook endpoint shares: the engine, the async pool, threads, tasks."""

    engine: Engine
    pg_pool: inbox_pg.Pool | None = None  # PostgreSQL: the async path
    threads: anyio.CapacityLimiter | None = None  # SQLite: the blocking path's threads
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # applies past answer

    @classmethod
    async def open(cls, engine: Engine, *, threads: int, pool_size: int) -> Ingress:
        """Ready to receive: on PostgreSQL with an open async pool of `pool_size`."""
        made = cls(engine, threads=anyio.CapacityLimiter(threads))
        if not database.is_sqlite(engine):
            made.pg_pool = inbox_pg.pool(engine.url.render_as_string(hide_password=False),
                                         size=pool_size)
            await made.pg_pool.open(wait=True, timeout=10)
        return made

    async def close(self) -> None:
        """Let applies that outlived their answer finish, then close the pool."""
        if self.background:
            await asyncio.wait(self.background, timeout=5)
        if self.pg_pool is not None:
            await self.pg_pool.close()
            self.pg_pool = None

    async def receive(self, event: inbox.Incoming, now: dt.datetime) -> inbox.Receipt:
        """The stored event's receipt, with its status after the apply (or `pending`)."""
        if self.pg_pool is not None:
            return await self._on_the_loop(self.pg_pool, event, now)
        return await self._in_threads(event, now)

    async def _on_the_loop(
        self, pool: inbox_pg.Pool, event: inbox.Incoming, now: dt.datetime
    ) -> inbox.Receipt:
        deadline = time.monotonic() + BUDGET_S
        stored: asyncio.Future[inbox.Receipt] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(inbox_pg.ingest(pool, event, now=now,
                                                     on_stored=stored.set_result))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        await asyncio.wait({stored, task}, timeout=BUDGET_S,
                           return_when=asyncio.FIRST_COMPLETED)
        if not stored.done():
            if task.done():
                task.result()  # raises what kept the event from being stored
            task.cancel()  # not stored in time: not acknowledged, the marketplace retries
            raise _not_stored()
        receipt = stored.result()
        if receipt.status != enums.EventStatus.PENDING:
            return receipt
        # past the budget the apply goes on in the background; the event is already stored
        done, _ = await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0))
        return task.result() if done else receipt

    async def _in_threads(self, event: inbox.Incoming, now: dt.datetime) -> inbox.Receipt:
        deadline = anyio.current_time() + BUDGET_S
        receipt: inbox.Receipt | None = None
        with anyio.move_on_after(BUDGET_S):
            receipt = await anyio.to_thread.run_sync(
                inbox.store, self.engine, event, now, limiter=self.threads,
                abandon_on_cancel=True)
        if receipt is None:  # not stored in time: not acknowledged, the marketplace retries
            raise _not_stored()
        if receipt.status != enums.EventStatus.PENDING:
            return receipt
        apply = functools.partial(inbox.process, self.engine, receipt.event_id, now=now)
        with anyio.move_on_after(deadline - anyio.current_time()):
            status = await anyio.to_thread.run_sync(apply, limiter=self.threads,
                                                    abandon_on_cancel=True)
            return inbox.Receipt(receipt.event_id, status)
        return receipt
