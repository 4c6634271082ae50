"""Convergence's batch writer on SQLite: `executemany` inside the `BEGIN IMMEDIATE` batch.

Straight to the driver: SQLAlchemy's per-row parameter processing would cost more than the
writes. The versions read are checked again inside the write transaction (what changed
meanwhile lost its race); each statement sets only the columns its rows change (SQLite
rewrites every index on a column named in `SET`), guarded by `version`; the ledger rows
follow `ledger.COLUMNS`, and their ids are read back for the batch's events to the app.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from creditsync import enums, ledger, policy
from creditsync.storage import grant_rows, models

# a rollover at the reset also moves the bonus (a new live grant)
_COLUMNS = {**models.NUMBER_COLUMNS, "bonus_credits": "bonus_credits"}
_SQLITE_LEDGER = (f"INSERT INTO ledger ({', '.join(ledger.COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in ledger.COLUMNS)})")
_SQLITE_GRANTS = (f"INSERT INTO grants ({', '.join(grant_rows.COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in grant_rows.COLUMNS)})")


def _sqlite_value(value: object) -> object:
    return models.sqlite_time(value) if isinstance(value, dt.datetime) else value


def apply(
    conn: Connection, changes: Sequence[policy.Change], versions: dict[str, int], now: dt.datetime,
    actor: str, correlation: str,
) -> tuple[set[str], dict[tuple[str, str], int]]:
    """Write `changes`; the ids written, and each step's ledger row by (instance id, kind)."""
    # Straight to the driver: SQLAlchemy's per-row parameter processing would cost more
    # than the writes. The rows were read in an earlier transaction: the versions are
    # checked again here, inside BEGIN IMMEDIATE (no other writer runs until it commits),
    # and a change whose instance was written meanwhile lost its race and is not applied;
    # the guard in the UPDATE stays as a safety net.
    raw = conn.connection.driver_connection
    assert raw is not None
    stamp = models.sqlite_time(now)
    found = dict(raw.execute(
        "SELECT instance_id, version FROM instances "
        "WHERE instance_id IN (SELECT value FROM json_each(?))",
        (json.dumps([c.instance_id for c in changes]),)).fetchall())
    changes = [c for c in changes if found.get(c.instance_id) == versions[c.instance_id]]
    # SQLite rewrites every index on a column named in SET, changed or not: so each
    # statement sets only the columns its rows change (a repair touches two of six).
    by_shape: dict[tuple[str, ...], list[policy.Change]] = {}
    for c in changes:
        shape = tuple(f for f in _COLUMNS if getattr(c.before, f) != getattr(c.after, f))
        by_shape.setdefault(shape, []).append(c)
    for shape, group in by_shape.items():
        sets = "".join(f"{_COLUMNS[f]} = ?, " for f in shape)
        cursor = raw.executemany(
            f"UPDATE instances SET {sets}version = version + 1, updated_at = ?, "
            "last_synced_at = ? WHERE instance_id = ? AND version = ?",
            [(*(_sqlite_value(getattr(c.after, f)) for f in shape), stamp, stamp,
              c.instance_id, versions[c.instance_id]) for c in group])
        if cursor.rowcount != len(group):
            raise RuntimeError("an instance changed inside an IMMEDIATE transaction")
    made: list[dict[str, object]] = []  # rollover grants, named by their ledger rows
    entries = []
    for c in changes:
        for step in c.steps:
            grant_id = None
            if step.kind == enums.LedgerKind.ROLLOVER:
                made.append(grant_rows.rollover_row(c.instance_id, step, now))
                grant_id = str(made[-1]["id"])
            entries.append(tuple(_sqlite_value(v) for v in ledger.row_values(ledger.step_entry(
                c.instance_id, step, at=now, actor=actor, correlation_id=correlation,
                grant_id=grant_id))))
    # rowids follow the largest one: inside BEGIN IMMEDIATE the rows after it are this batch's
    last = raw.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]
    raw.executemany(_SQLITE_LEDGER, entries)
    if made:
        raw.executemany(_SQLITE_GRANTS, [tuple(_sqlite_value(row[column]) for column in
                                               grant_rows.COLUMNS) for row in made])
    ids = {(instance_id, kind): ledger_id for ledger_id, instance_id, kind in raw.execute(
        "SELECT id, instance_id, kind FROM ledger WHERE id > ?", (last,))}
    return {c.instance_id for c in changes}, ids
