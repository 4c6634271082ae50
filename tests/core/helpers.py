"""Small builders shared by the core tests."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import catalog, policy, subscription_store, subscriptions
from creditsync.storage import database, models

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
RESET = policy.Policy("Reset")


def accept(engine: Engine, instance_id: str, event_type: str, at: dt.datetime,
           plan: str | None = None, expires: dt.datetime | None = None) -> str:
    with database.write(engine) as conn:
        default = catalog.load(conn).default.id
        return subscription_store.accept(
            conn, subscriptions.BillingEvent(instance_id, event_type, at, plan, expires),
            default, at)


def instance(engine: Engine, instance_id: str) -> sa.Row[tuple[object, ...]]:
    table = models.INSTANCES
    with database.read(engine) as conn:
        return conn.execute(sa.select(table).where(table.c.instance_id == instance_id)).one()


def hand_edit(engine: Engine, instance_id: str, **values: object) -> None:
    """Change an instance behind creditsync's back (the drift the original bug left)."""
    table = models.INSTANCES
    with database.write(engine) as conn:
        conn.execute(table.update().where(table.c.instance_id == instance_id).values(**values))


def count(engine: Engine, table: sa.Table) -> int:
    with database.read(engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
