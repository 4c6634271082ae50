"""The held-credits invariant: each instance's `credits_held` equals the sum of its `held`
reservations."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import enums
from creditsync.storage import database, models


def assert_holds_match(engine: Engine) -> dict[str, int]:
    """Check every instance; returns each instance's held credits."""
    r, i = models.RESERVATIONS, models.INSTANCES
    with database.read(engine) as conn:
        held: dict[str, int] = dict(conn.execute(
            sa.select(r.c.instance_id, sa.func.sum(r.c.amount))
            .where(r.c.status == enums.ReservationStatus.HELD)
            .group_by(r.c.instance_id)).all())
        columns: dict[str, int] = dict(
            conn.execute(sa.select(i.c.instance_id, i.c.credits_held)).all())
    for instance_id, value in columns.items():
        assert value == int(held.get(instance_id, 0)), (
            f"{instance_id}: credits_held {value}, held reservations sum to "
            f"{held.get(instance_id, 0)}")
    return {k: int(v) for k, v in columns.items()}
