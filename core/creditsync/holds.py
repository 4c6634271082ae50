"""Held credits: freeing the holds that are past their TTL, for one instance or in batches.

`instances.credits_held` is kept equal to the sum of the instance's `held` reservations in
the same transaction as they change; every writer here takes `lock_instance` first (or runs
inside a transaction that did), as the reserve, commit and release paths do.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import enums
from creditsync.storage import database, models

_i = models.INSTANCES
_r = models.RESERVATIONS

HELD = enums.ReservationStatus.HELD


def expire_instance(conn: Connection, instance_id: str, *, now: dt.datetime) -> int:
    """Expire the instance's holds past their TTL (its lock is held); how many."""
    return _expire(conn, sa.and_(_r.c.instance_id == instance_id, _r.c.status == HELD,
                                 _r.c.expires_at <= now), now)


def expire_due(engine: Engine, *, now: dt.datetime, batch: int = 500) -> int:
    """Expire every hold past its TTL, a batch per transaction (found through the
    `(status, expires_at)` index); the instances' numbers stay as they are. How many."""
    total = 0
    while True:
        with database.write(engine) as conn:
            due = conn.execute(
                sa.select(_r.c.id, _r.c.instance_id)
                .where(_r.c.status == HELD, _r.c.expires_at <= now)
                .order_by(_r.c.expires_at).limit(batch)).all()
            if not due:
                return total
            for instance_id in sorted({row.instance_id for row in due}):  # one order: no
                database.lock_instance(conn, instance_id)                   # deadlock
            # re-checked under the locks: a commit or release may have settled some
            total += _expire(conn, sa.and_(_r.c.id.in_([row.id for row in due]),
                                           _r.c.status == HELD), now)
        if len(due) < batch:
            return total


def _expire(conn: Connection, which: sa.ColumnElement[bool], now: dt.datetime) -> int:
    freed = conn.execute(
        _r.update().where(which)
        .values(status=enums.ReservationStatus.EXPIRED, settled_at=now)
        .returning(_r.c.instance_id, _r.c.amount)).all()
    release(conn, ((row.instance_id, row.amount) for row in freed))
    return len(freed)


def release(conn: Connection, amounts: Iterable[tuple[str, int]]) -> None:
    """Take `amount` off each instance's `credits_held` (one statement per batch)."""
    per_instance: Counter[str] = Counter()
    for instance_id, amount in amounts:
        per_instance[instance_id] += amount
    if not per_instance:
        return
    conn.execute(
        _i.update().where(_i.c.instance_id == sa.bindparam("iid"))
        .values(credits_held=_i.c.credits_held - sa.bindparam("freed")),
        [{"iid": iid, "freed": freed} for iid, freed in sorted(per_instance.items())])
