"""Replay the ledger: each row's "before" must equal the previous row's "after", and the
last "after" must equal the instance's current numbers."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync.storage import database, models


def assert_ledger_replays(engine: Engine, *, chain: bool = True) -> int:
    """Check every instance; returns how many ledger rows were replayed.

    `chain=False` for tests that edit instances behind creditsync's back: such edits
    leave no ledger row, so only the final numbers can be compared.
    """
    ledger = models.LEDGER
    inst = models.INSTANCES
    with database.read(engine) as conn:
        rows = conn.execute(sa.select(ledger).order_by(ledger.c.instance_id, ledger.c.id)).all()
        current = {r.instance_id: r for r in conn.execute(sa.select(inst))}
    state: dict[str, tuple[object, ...]] = {}
    for row in rows:
        before = (
            row.plan_before,
            row.credits_total_before,
            row.credits_used_before,
            row.bonus_before,
        )
        expected = state.get(row.instance_id, (None, 0, 0, 0))
        assert not chain or before == expected, (
            f"ledger row {row.id} of {row.instance_id}: {before} != {expected}"
        )
        state[row.instance_id] = (
            row.plan_after,
            row.credits_total_after,
            row.credits_used_after,
            row.bonus_after,
        )
    for instance_id, inst_row in current.items():
        numbers = (
            inst_row.plan_id,
            inst_row.credits_total,
            inst_row.credits_used_month,
            inst_row.bonus_credits,
        )
        assert state.get(instance_id) == numbers, (
            f"{instance_id}: ledger replays to {state.get(instance_id)}, instance has {numbers}"
        )
    return len(rows)
