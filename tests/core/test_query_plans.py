"""The plan of every statement the loop runs: a tick and a full converge, recorded as they
run and explained on the same database. Sequential scans are switched off for the
explaining (on PostgreSQL), so a plan that still reads a whole table has no index to use:
in a tick, no statement may read every row of a table that grows with the instances; the
full converge reads `instances` once, in ranges of its storage (a TID range scan on
PostgreSQL, `rowid` ranges on SQLite), and everything else by key."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from creditsync import catalog, convergence, instances, usage
from creditsync.storage import database
from tests.core.helpers import DAY, HOUR, RESET, accept, hand_edit
from tests.support.times import T0

# the tables that grow with the instances (the catalog, the policy and the marks do not)
GROWING = ("instances", "subscriptions", "ledger", "grants", "outbox", "reservations",
           "webhook_events", "usage_requests")


@dataclasses.dataclass(frozen=True)
class Statement:
    sql: str
    parameters: Any


@contextmanager
def recorded(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement run through SQLAlchemy on `engine` meanwhile that reads or writes a
    growing table (a single row's INSERT reads nothing)."""
    found: list[Statement] = []

    def record(conn: Connection, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> None:
        words = statement.split()
        if words and words[0].upper() in ("SELECT", "WITH", "UPDATE", "DELETE") and any(
                re.search(rf"\b{table}\b", statement) for table in GROWING):
            found.append(Statement(statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plan_of(engine: Engine, statement: Statement) -> str:
    with engine.connect() as conn, conn.begin() as transaction:
        if database.is_sqlite(conn):
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement.sql}",
                                        statement.parameters)
            plan = " | ".join(str(row[-1]) for row in rows)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {statement.sql}", statement.parameters)
            plan = " | ".join(str(row[0]) for row in rows)
        transaction.rollback()
    return plan


def whole_table_reads(plan: str) -> list[str]:
    """The growing tables `plan` reads whole (a sequential scan, or SQLite's `SCAN t`
    without an index that bounds it)."""
    found = []
    for table in GROWING:
        if re.search(rf"Seq Scan on {table}\b", plan) or re.search(
                rf"\bSCAN {table}\b(?! USING (COVERING )?INDEX)", plan):
            found.append(table)
    return found


def busy(engine: Engine) -> None:
    """Instances with every kind of change a tick looks for."""
    for name in ("queued", "catalog", "ended", "expiring", "quiet"):
        instances.provision(engine, name, now=T0, pol=RESET)
    accept(engine, "queued", "PaidPlanPurchased", T0 + HOUR, "pro")  # queued
    accept(engine, "expiring", "PaidPlanAutoRenewalCancelled", T0, "starter", T0 + DAY)
    accept(engine, "catalog", "PaidPlanPurchased", T0, "scale")
    convergence.tick(engine, now=T0 + HOUR, pol=RESET)
    accept(engine, "queued", "PaidPlanPurchased", T0 + 2 * HOUR, "scale")
    scale = catalog.require(engine).get("scale")
    assert scale is not None
    catalog.put(engine, dataclasses.replace(scale, monthly_credits=30000), T0 + 2 * HOUR)
    usage.consume(engine, "ended", 10, "k", now=T0 + 2 * HOUR, pol=RESET)
    hand_edit(engine, "quiet", credits_total=99)  # for the full converge to find


def test_no_statement_of_a_tick_reads_a_whole_table(engine: Engine) -> None:
    busy(engine)
    with recorded(engine) as statements:
        summary = convergence.tick(engine, now=T0 + 40 * DAY, pol=RESET)
    assert all(summary.candidates.values()), summary.candidates  # every set had its work
    assert summary.repaired >= 4
    assert len(statements) >= 6
    for statement in statements:
        plan = plan_of(engine, statement)
        assert whole_table_reads(plan) == [], (statement.sql, plan)


def test_a_full_converge_reads_the_instances_once_in_storage_ranges(engine: Engine) -> None:
    busy(engine)
    with recorded(engine) as statements:
        summary = convergence.full_scan(engine, now=T0 + 3 * HOUR, pol=RESET)
    assert (summary.scanned, summary.missed) == (5, 1)  # the hand edit: nobody announced it
    ranges = []
    for statement in statements:
        plan = plan_of(engine, statement)
        if re.search(r"\b(ctid|rowid)\b", statement.sql) and "count(" in statement.sql:
            ranges.append(plan)
        else:
            assert whole_table_reads(plan) == [], (statement.sql, plan)
    assert ranges, "the full converge ran no range scan"
    for plan in ranges:
        assert "Tid Range Scan on instances" in plan or re.search(
            r"SEARCH instances USING INTEGER PRIMARY KEY \(rowid>\? AND rowid<\?\)", plan), plan
