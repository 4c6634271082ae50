"""What a tick converges: the instances something changed for, never every row.

Each set is read through an index or a queue written in the same transaction as the change:

- `converge_queue`: instances a path changed without converging them at once (`enqueue`):
  a subscription accepted outside the webhook path, a write that lost its race to usage;
- `catalog_changes`: plans added, changed or removed (`catalog` records them with its
  write): the instances on them (`ix_instances_plan_id`) and those whose subscription
  names them (`ix_subscriptions_plan_id`);
- periods ended: `period_end <= now` (`ix_instances_period_end`); converging an instance
  moves its `period_end` past `now`, so the range holds only what is still to do;
- expiries crossed: subscriptions whose `expires_at` lies between the cutoff (`now - grace`)
  the last tick converged up to (`tick_marks`) and this tick's, in either order: a longer
  grace period brings instances back to their paid plan (`ix_subscriptions_expires_at`); a
  change of the grace period queues the expiries between its old and new cutoffs, which
  paths that converged meanwhile may have put on either side.

The webhook, provisioning and usage paths converge their instance at once and queue nothing.
What nobody announces (a hand edit in the database) is what the full scan is for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from creditsync.storage import models

_i = models.INSTANCES
_s = models.SUBSCRIPTIONS
_queue = models.CONVERGE_QUEUE
_catalog = models.CATALOG_CHANGES
_marks = models.TICK_MARKS

CHUNK = 5000  # ids per IN list


@dataclass(frozen=True)
class Pending:
    """One tick's candidates, and what to mark done once they are converged."""

    instance_ids: tuple[str, ...]
    cutoff: dt.datetime
    queue_rows: tuple[int, ...] = ()
    catalog_rows: tuple[int, ...] = ()
    plans: tuple[str, ...] = ()
    sets: dict[str, int] = field(default_factory=dict)  # how many ids each set gave


def enqueue(conn: Connection, instance_ids: Iterable[str], now: dt.datetime) -> None:
    """Queue `instance_ids` for the next tick, inside the caller's transaction."""
    rows = [{"instance_id": instance_id, "queued_at": now}
            for instance_id in sorted(set(instance_ids))]
    if rows:
        conn.execute(_queue.insert(), rows)


def plans_changed(conn: Connection, plan_ids: Iterable[str], now: dt.datetime) -> None:
    """Record that these plans were added, changed or removed (inside the catalog's write)."""
    rows = [{"plan_id": plan_id, "changed_at": now} for plan_id in sorted(set(plan_ids))]
    if rows:
        conn.execute(_catalog.insert(), rows)


def expiry_window(conn: Connection, low: dt.datetime, high: dt.datetime,
                  now: dt.datetime) -> None:
    """Queue the instances whose subscription expires between `low` and `high` (inside a
    change of the grace period: between the old cutoff and the new one, an instance a path
    converged meanwhile may be on the wrong side of the tick's own range)."""
    ids = conn.execute(sa.select(_s.c.instance_id).where(
        _s.c.expires_at >= low, _s.c.expires_at <= high, _s.c.status != "removed")).scalars()
    enqueue(conn, ids, now)


def queued(conn: Connection) -> tuple[list[int], set[str]]:
    """The queue's rows (their ids, to delete exactly those) and the instances they name."""
    rows = conn.execute(sa.select(_queue.c.id, _queue.c.instance_id)).all()
    return [row.id for row in rows], {row.instance_id for row in rows}


def changed_plans(conn: Connection) -> tuple[list[int], set[str]]:
    rows = conn.execute(sa.select(_catalog.c.id, _catalog.c.plan_id)).all()
    return [row.id for row in rows], {row.plan_id for row in rows}


def on_plans(conn: Connection, plan_ids: Sequence[str]) -> set[str]:
    """Instances on these plans, or whose subscription names one of them."""
    if not plan_ids:
        return set()
    found = set(conn.execute(sa.select(_i.c.instance_id).where(_i.c.plan_id.in_(plan_ids)))
                .scalars())
    found |= set(conn.execute(sa.select(_s.c.instance_id).where(_s.c.plan_id.in_(plan_ids)))
                 .scalars())
    return found


def period_ended(conn: Connection, now: dt.datetime) -> set[str]:
    """Instances whose period is over (the monthly reset is due)."""
    return set(conn.execute(sa.select(_i.c.instance_id).where(_i.c.period_end <= now))
               .scalars())


def expiry_crossed(conn: Connection, previous: dt.datetime | None,
                   cutoff: dt.datetime) -> set[str]:
    """Instances whose subscription's expiry lies between the two cutoffs (None: every
    expiry up to `cutoff`, once): their paid time ran out, or came back with more grace."""
    low, high = (previous, cutoff) if previous is None or previous <= cutoff else (
        cutoff, previous)
    query = sa.select(_s.c.instance_id).where(_s.c.expires_at <= high,
                                              _s.c.status != "removed")
    if low is not None:
        query = query.where(_s.c.expires_at > low)
    return set(conn.execute(query).scalars())


def expiry_mark(conn: Connection) -> dt.datetime | None:
    """The expiry cutoff the last tick or full scan converged up to (None: none yet)."""
    return conn.execute(sa.select(_marks.c.expiry_cutoff).where(_marks.c.id == 1)).scalar()


def collect(conn: Connection, now: dt.datetime, grace: dt.timedelta) -> Pending:
    """Every instance a tick at `now` must look at, each set through its index or queue."""
    cutoff = now - grace
    queue_rows, from_queue = queued(conn)
    catalog_rows, plans = changed_plans(conn)
    sets = {
        "queued": from_queue,
        "catalog": on_plans(conn, sorted(plans)),
        "period_ended": period_ended(conn, now),
        "expired": expiry_crossed(conn, expiry_mark(conn), cutoff),
    }
    ids = set().union(*sets.values())
    return Pending(tuple(sorted(ids)), cutoff, tuple(queue_rows), tuple(catalog_rows),
                   tuple(sorted(plans)), {name: len(found) for name, found in sets.items()})


def done(conn: Connection, pending: Pending, now: dt.datetime) -> None:
    """Mark `pending` handled: delete exactly the queue rows it read (rows queued meanwhile
    stay for the next tick) and move the expiry cutoff to its own."""
    for rows, table in ((pending.queue_rows, _queue), (pending.catalog_rows, _catalog)):
        for start in range(0, len(rows), CHUNK):
            conn.execute(table.delete().where(table.c.id.in_(rows[start:start + CHUNK])))
    mark_expiry(conn, pending.cutoff, now)


def mark_expiry(conn: Connection, cutoff: dt.datetime, now: dt.datetime) -> None:
    """Every expiry up to `cutoff` is converged (a tick's, or a full scan's)."""
    if conn.execute(_marks.update().where(_marks.c.id == 1).values(
            expiry_cutoff=cutoff, updated_at=now)).rowcount == 0:
        conn.execute(_marks.insert().values(id=1, expiry_cutoff=cutoff, updated_at=now))


def plans_in_use(conn: Connection) -> list[str]:
    """The distinct plans instances are on, by a skip scan of `ix_instances_plan_id`: one
    index probe per plan, not a read of every row."""
    step = sa.text("""
        WITH RECURSIVE used(plan_id) AS (
            SELECT min(plan_id) FROM instances
            UNION ALL
            SELECT (SELECT min(i.plan_id) FROM instances i WHERE i.plan_id > used.plan_id)
            FROM used WHERE used.plan_id IS NOT NULL
        )
        SELECT plan_id FROM used WHERE plan_id IS NOT NULL
    """)
    return [str(plan_id) for plan_id in conn.execute(step).scalars()]


def count_on(conn: Connection, plan_ids: Sequence[str]) -> int:
    """How many instances are on these plans (an index range per plan)."""
    if not plan_ids:
        return 0
    return int(conn.execute(sa.select(sa.func.count()).select_from(_i)
                            .where(_i.c.plan_id.in_(plan_ids))).scalar_one())
