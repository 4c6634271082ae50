"""Replay the ledger: each row's "before" must equal the previous row's "after", and the
last "after" must equal the instance's current numbers; and every grant's `remaining` must be
what the ledger's rows that name it (`grant_id`) and its draws (`ledger_grant_draws`) add up
to, with `bonus_credits` the sum over the live grants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync.storage import database, models


def assert_ledger_replays(
    engine: Engine, *, chain: bool = True, instance_id: str | None = None
) -> int:
    """Check every instance (or only `instance_id`); returns how many ledger rows were
    replayed.

    `chain=False` for tests that edit instances behind creditsync's back: such edits
    leave no ledger row, so only the final numbers can be compared.
    """
    ledger = models.LEDGER
    inst = models.INSTANCES
    rows_q, inst_q = sa.select(ledger), sa.select(inst)
    if instance_id is not None:
        rows_q = rows_q.where(ledger.c.instance_id == instance_id)
        inst_q = inst_q.where(inst.c.instance_id == instance_id)
    with database.read(engine) as conn:
        rows = conn.execute(rows_q.order_by(ledger.c.instance_id, ledger.c.id)).all()
        current = {r.instance_id: r for r in conn.execute(inst_q)}
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
    for name, inst_row in current.items():
        numbers = (
            inst_row.plan_id,
            inst_row.credits_total,
            inst_row.credits_used_month,
            inst_row.bonus_credits,
        )
        assert state.get(name) == numbers, (
            f"{name}: ledger replays to {state.get(name)}, instance has {numbers}"
        )
    _assert_grants_replay(engine, rows, instance_id)
    return len(rows)


def _assert_grants_replay(
    engine: Engine, rows: Sequence[sa.Row[Any]], instance_id: str | None
) -> None:
    grants, draws, inst = models.GRANTS, models.LEDGER_GRANT_DRAWS, models.INSTANCES
    grants_q = sa.select(grants)
    draws_q = sa.select(draws)
    bonus_q = sa.select(inst.c.instance_id, inst.c.bonus_credits)
    if instance_id is not None:
        grants_q = grants_q.where(grants.c.instance_id == instance_id)
        draws_q = draws_q.where(draws.c.grant_id.in_(
            sa.select(grants.c.id).where(grants.c.instance_id == instance_id)))
        bonus_q = bonus_q.where(inst.c.instance_id == instance_id)
    with database.read(engine) as conn:
        stored = {g.id: g for g in conn.execute(grants_q)}
        parts: dict[int, list[tuple[str, int]]] = {}
        for d in conn.execute(draws_q):
            parts.setdefault(d.ledger_id, []).append((d.grant_id, d.amount))
        bonus = dict(conn.execute(bonus_q).all())
    # a migration grant holds what the ledger recorded as bonus before grants existed
    replayed = {g.id: g.amount if g.source == "migration" else 0 for g in stored.values()}
    for row in rows:
        delta = row.bonus_after - row.bonus_before
        drawn = parts.pop(row.id, [])
        if row.grant_id is not None:
            assert not drawn, f"ledger row {row.id} names a grant and has draws"
            assert row.grant_id in stored, f"ledger row {row.id}: no grant {row.grant_id}"
            replayed[row.grant_id] += delta
        elif drawn:
            assert sum(a for _, a in drawn) == -delta, (
                f"ledger row {row.id}: draws {drawn} do not add up to {-delta}")
            for grant_id, amount in drawn:
                assert amount > 0, f"ledger row {row.id}: a draw of {amount}"
                replayed[grant_id] -= amount
        else:
            assert delta == 0, (
                f"ledger row {row.id} ({row.kind}) changes the bonus by {delta} "
                "without naming a grant")
    assert not parts, f"draws of no ledger row: {parts}"
    live: dict[str, int] = {}
    for grant_id, g in stored.items():
        assert replayed[grant_id] == g.remaining, (
            f"grant {grant_id}: the ledger replays to {replayed[grant_id]}, it has "
            f"{g.remaining}")
        if g.status == "live":
            assert g.remaining > 0, f"live grant {grant_id} has nothing left"
            live[g.instance_id] = live.get(g.instance_id, 0) + g.remaining
        else:
            assert g.remaining == 0, f"{g.status} grant {grant_id}: remaining {g.remaining}"
            assert g.ended_at is not None, f"{g.status} grant {grant_id} has no ended_at"
    for instance_id, held in bonus.items():
        assert live.get(instance_id, 0) == held, (
            f"{instance_id}: bonus_credits {held}, live grants hold {live.get(instance_id, 0)}")
