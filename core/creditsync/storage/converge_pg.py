"""Convergence's batch writer on PostgreSQL: `COPY` into staging tables, then one statement.

The batch is streamed with `COPY` into two session-local tables; one statement applies it:
a version-guarded `UPDATE … FROM` whose `RETURNING` feeds the ledger `INSERT`, so only the
rows actually written get ledger rows, and the rollover grants' `INSERT … SELECT` (a
`rollover` step at the monthly reset makes one grant, named by its ledger row); it answers
the ids written and the ledger rows' ids (for the batch's events to the app).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from creditsync import enums, ledger, policy
from creditsync.storage import grant_rows

_PG_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS converge_updates (
    instance_id text PRIMARY KEY, version int, plan_id text, credits_total bigint,
    credits_used_month bigint, bonus_credits bigint, period_start timestamptz,
    period_end timestamptz, applied_rev int) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS converge_ledger (n int,
    {", ".join(f"{column} {ledger.TYPES[column]}" for column in ledger.VARYING)},
    grant_expires_at timestamptz, grant_key text) ON COMMIT DELETE ROWS;
DELETE FROM converge_updates; DELETE FROM converge_ledger
"""
# the ledger's columns, the batch-wide ones from parameters and the rest from the staging
_LEDGER_SELECT = ", ".join(f"%({column})s" if column in ledger.FIXED else f"e.{column}"
                           for column in ledger.COLUMNS)
_PG_APPLY = """
WITH u AS (
    UPDATE instances AS i SET
        plan_id = v.plan_id, credits_total = v.credits_total,
        credits_used_month = v.credits_used_month, bonus_credits = v.bonus_credits,
        period_start = v.period_start,
        period_end = v.period_end, applied_rev = v.applied_rev, version = i.version + 1,
        updated_at = %(at)s, last_synced_at = %(at)s
    FROM converge_updates v WHERE i.instance_id = v.instance_id AND i.version = v.version
    RETURNING i.instance_id
), l AS (
    INSERT INTO ledger (""" + ", ".join(ledger.COLUMNS) + """)
    SELECT """ + _LEDGER_SELECT + """
    FROM converge_ledger e JOIN u ON u.instance_id = e.instance_id
    ORDER BY e.n
    RETURNING id, instance_id, kind
), g AS (
    INSERT INTO grants (""" + ", ".join(grant_rows.COLUMNS) + """)
    SELECT e.grant_id, e.instance_id, e.bonus_after - e.bonus_before,
        e.bonus_after - e.bonus_before, """ + str(grant_rows.DEFAULT_PRIORITY) + """,
        e.grant_expires_at, e.reason, '""" + enums.GrantSource.ROLLOVER + """', e.grant_key,
        '""" + enums.GrantStatus.LIVE + """', %(at)s, NULL
    FROM converge_ledger e JOIN u ON u.instance_id = e.instance_id
    WHERE e.kind = '""" + enums.LedgerKind.ROLLOVER + """'
)
SELECT instance_id, NULL::bigint, NULL::text FROM u
UNION ALL SELECT instance_id, id, kind FROM l
"""


def apply(
    conn: Connection, changes: Sequence[policy.Change], versions: dict[str, int], now: dt.datetime,
    actor: str, correlation: str,
) -> tuple[set[str], dict[tuple[str, str], int]]:
    """Write `changes`; the ids written, and each step's ledger row by (instance id, kind)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(_PG_STAGING)
        with cur.copy("COPY converge_updates FROM STDIN") as copy:
            for c in changes:
                a = c.after
                copy.write_row((c.instance_id, versions[c.instance_id], a.plan_id,
                                a.credits_total, a.credits_used, a.bonus_credits,
                                a.period_start, a.period_end, a.applied_rev))
        with cur.copy("COPY converge_ledger FROM STDIN") as copy:
            n = 0
            for c in changes:
                for step in c.steps:
                    if step.kind == enums.LedgerKind.ROLLOVER:
                        copy.write_row((n, *ledger.step_values(
                            c.instance_id, step, grant_rows.new_id()), step.expires_at,
                            grant_rows.rollover_key(step.after.period_start)))
                    else:
                        copy.write_row((n, *ledger.step_values(c.instance_id, step), None,
                                        None))
                    n += 1
        if len(changes) > 100:  # a big batch: let the planner see it (index probes, no seq scan)
            cur.execute("ANALYZE converge_updates; SET LOCAL work_mem = '64MB'")
        cur.execute(_PG_APPLY, {"at": now, "actor": actor, "correlation_id": correlation})
        applied: set[str] = set()
        ids: dict[tuple[str, str], int] = {}
        for instance_id, ledger_id, kind in cur.fetchall():
            if ledger_id is None:
                applied.add(instance_id)
            else:
                ids[(instance_id, kind)] = ledger_id
        return applied, ids
