"""Convergence benchmark: creditsync's converge against a hand-written floor and the
original system's per-row approach, in one run on one database.

    python bench/converge.py --database-url postgresql+psycopg://... --instances 1000000

(a) creditsync's full converge of N instances with 10% drifted, ledger rows included;
(b) the same converge right after, nothing drifted (the steady-state scan);
(c) the floor: one hand-written set-based statement that repairs the same rows and writes
    their ledger rows (a data-modifying CTE on PostgreSQL; UPDATE … FROM plus INSERT …
    SELECT in one transaction on SQLite);
(d) the original system's approach: per instance read subscription, read plan, update,
    commit — timed on 20,000 instances and scaled to N.
With `--ticks`, on the same database: the first 100,000 instances are seeded and converged
first, and the tick with the same changes as (f) below is timed at N = 100,000 before the
rest are seeded; after (b):
(e) the incremental tick with nothing changed at N;
(f) the tick after 1,000 subscription changes (queued, as a path that does not converge at
    once does), 500 ended periods and 200 expiries, at N — every change converged by it;
(g) is (b), the full steady scan.
Ends with one JSON line. The database must be empty or disposable: the benchmark writes
instances with the prefix `bench-` and removes them first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from creditsync import catalog, changes, clock, convergence, drift, policy, seed
from creditsync.storage import database, models, schema

PREFIX = "bench-"
ORIGINAL_SAMPLE = 20_000
TICK_SMALL = 100_000
SUB_CHANGES, ENDED_PERIODS, EXPIRIES = 1000, 500, 200


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def floor_sql(sqlite: bool) -> list[str]:
    desired = """
        SELECT i.instance_id, i.plan_id AS plan_before, i.credits_total AS total_before,
               i.credits_used_month AS used, i.bonus_credits AS bonus,
               COALESCE(CASE WHEN s.status <> 'removed'
                             AND (s.expires_at IS NULL OR s.expires_at > :now)
                             THEN s.plan_id END, :default_plan) AS plan_after
        FROM instances i LEFT JOIN subscriptions s ON s.instance_id = i.instance_id
    """
    drifted = f"""
        SELECT d.*, p.monthly_credits AS total_after FROM ({desired}) d
        JOIN plans p ON p.id = d.plan_after
        WHERE d.plan_before <> d.plan_after OR d.total_before <> p.monthly_credits
    """
    ledger_cols = """(instance_id, at, kind, actor, correlation_id, plan_before, plan_after,
        credits_total_before, credits_total_after, credits_used_before, credits_used_after,
        bonus_before, bonus_after, reason)"""
    ledger_vals = """instance_id, :now, 'drift_repair', 'cli', 'floor', plan_before, plan_after,
        total_before, total_after, used, used, bonus, bonus, 'floor'"""
    if sqlite:
        return [
            f"CREATE TEMP TABLE floor_d AS {drifted}",
            f"INSERT INTO ledger {ledger_cols} SELECT {ledger_vals} FROM floor_d",
            """UPDATE instances SET plan_id = f.plan_after, credits_total = f.total_after,
                   version = instances.version + 1, updated_at = :now
               FROM floor_d f WHERE instances.instance_id = f.instance_id""",
            "DROP TABLE floor_d",
        ]
    return [f"""
        WITH dd AS ({drifted}),
        u AS (UPDATE instances i SET plan_id = dd.plan_after, credits_total = dd.total_after,
                     version = i.version + 1, updated_at = :now
              FROM dd WHERE i.instance_id = dd.instance_id RETURNING dd.*)
        INSERT INTO ledger {ledger_cols} SELECT {ledger_vals} FROM u
    """]


def redrift(engine: sa.Engine, correlation: str) -> int:
    """Put back the drift that the rows repaired under `correlation` had."""
    with database.write(engine) as conn:
        result = conn.execute(sa.text("""
            UPDATE instances SET plan_id = l.plan_before, credits_total = l.credits_total_before
            FROM ledger l WHERE l.correlation_id = :c AND l.instance_id = instances.instance_id
        """), {"c": correlation})
        conn.execute(sa.text("DELETE FROM ledger WHERE correlation_id = :c"), {"c": correlation})
        return int(result.rowcount)


def vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name != "sqlite" else "ANALYZE")


def original_approach(engine: sa.Engine, ids: list[str], now: dt.datetime) -> float:
    """The Node backend's loop: per instance read subscription, read plan, update, commit."""
    started = time.perf_counter()
    with engine.connect() as conn:
        for instance_id in ids:
            with conn.begin():
                sub = conn.execute(sa.text(
                    "SELECT plan_id, status, expires_at FROM subscriptions WHERE instance_id = :i"),
                    {"i": instance_id}).first()
                plan_id = sub.plan_id if sub is not None and sub.status != "removed" else "free"
                credits = conn.execute(sa.text(
                    "SELECT monthly_credits FROM plans WHERE id = :p"), {"p": plan_id}).scalar_one()
                conn.execute(sa.text(
                    "UPDATE instances SET plan_id = :p, credits_total = :c, updated_at = :now "
                    "WHERE instance_id = :i"), {"p": plan_id, "c": credits, "now": now,
                                                "i": instance_id})
    return time.perf_counter() - started


def announce(engine: sa.Engine, now: dt.datetime, moment: dt.datetime) -> list[str]:
    """The changes a tick is timed on: `SUB_CHANGES` plan changes accepted without
    converging (queued in the same transaction, as `subscription_store.accept` does),
    `EXPIRIES` subscriptions cancelled and expired at `moment`, `ENDED_PERIODS` periods
    ended at `moment`. Returns the instances changed."""
    s, i = models.SUBSCRIPTIONS, models.INSTANCES
    with database.write(engine) as conn:
        paid = conn.execute(sa.select(s.c.instance_id, s.c.plan_id).where(
            s.c.instance_id.like(PREFIX + "%"), s.c.status == "active")
            .order_by(s.c.instance_id).limit(SUB_CHANGES + EXPIRIES)).all()
        changed, expiring = paid[:SUB_CHANGES], [r.instance_id for r in paid[SUB_CHANGES:]]
        conn.execute(s.update().where(s.c.instance_id == sa.bindparam("b_id")).values(
            plan_id=sa.bindparam("b_plan"), rev=s.c.rev + 1, source_time=now, updated_at=now),
            [{"b_id": r.instance_id, "b_plan": "scale" if r.plan_id == "pro" else "pro"}
             for r in changed])
        changes.enqueue(conn, [r.instance_id for r in changed], now)
        conn.execute(s.update().where(s.c.instance_id.in_(expiring)).values(
            status="cancelled", expires_at=moment, updated_at=now))
        unpaid = ~sa.exists().where(s.c.instance_id == i.c.instance_id)
        ended = list(conn.execute(sa.select(i.c.instance_id).where(
            i.c.instance_id.like(PREFIX + "%"), unpaid).order_by(i.c.instance_id)
            .limit(ENDED_PERIODS)).scalars())
        conn.execute(i.update().where(i.c.instance_id.in_(ended)).values(period_end=moment))
    found = [r.instance_id for r in changed] + expiring + ended
    assert len(set(found)) == SUB_CHANGES + EXPIRIES + ENDED_PERIODS, len(set(found))
    return found


def timed_tick(engine: sa.Engine, pol: policy.Policy, now: dt.datetime, batch_size: int,
               label: str) -> float:
    """Announce the changes, then time one tick; every change must be converged by it."""
    ids = announce(engine, now - dt.timedelta(minutes=5), now - dt.timedelta(minutes=2))
    vacuum(engine)
    t = time.perf_counter()
    summary = convergence.tick(engine, pol=pol, now=now, batch_size=batch_size)
    took = time.perf_counter() - t
    log(f"{label}: {summary.line()}")
    assert (summary.repaired, summary.failed) == (len(ids), 0), summary.line()
    left = list(drift.scan(engine, instance_ids=ids, now=now, pol=pol))
    assert not left, f"{len(left)} announced changes left drifted: {left[:3]}"
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--drifted", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--ticks", action="store_true",
                        help="also time the incremental tick: (e), (f) at N and at 100,000")
    args = parser.parse_args()
    pol = policy.Policy()

    engine = database.create(args.database_url)
    sqlite = database.is_sqlite(engine)
    schema.upgrade(engine)
    now = clock.utcnow()
    with database.write(engine) as conn:
        catalog.seed(conn, None, now)
        for table in ("ledger", "subscriptions", "instances", "usage_requests",
                      "converge_queue"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE instance_id LIKE :p"),
                         {"p": PREFIX + "%"})
        default_plan = catalog.load(conn).default.id
    result: dict[str, object] = {}
    ticks: dict[str, float] = {}
    rest, percent, prefix = args.instances, args.drifted, PREFIX
    if args.ticks:
        small = min(TICK_SMALL, args.instances // 10)  # N / 10 below a million
        log(f"--ticks: seeding and converging {small:,} instances first")
        early = now - dt.timedelta(hours=1)  # so that the rest of the run is later
        seed.seed(engine, small, args.drifted, now=early, prefix=PREFIX + "a")
        vacuum(engine)
        convergence.full_scan(engine, pol=pol, now=early, batch_size=args.batch_size)
        result["tick_small_instances"] = small
        ticks["tick_100k_s"] = timed_tick(engine, pol, early + dt.timedelta(minutes=10),
                                          args.batch_size, f"(f) tick at {small:,}")
        # the rest, drifted so that N as a whole has the drift asked for
        rest, prefix = args.instances - small, PREFIX + "b"
        percent = 100 * seed.drifted_count(args.instances, args.drifted) / max(rest, 1)
    log(f"seeding {rest:,} instances, {percent:.2f}% drifted")
    t = time.perf_counter()
    drifted = seed.seed(engine, rest, percent, now=now, prefix=prefix)
    log(f"seeded in {time.perf_counter() - t:.1f}s; {drifted:,} drifted")
    vacuum(engine)

    log("(c) floor: one hand-written set-based repair with its ledger rows")
    params = {"now": now if not sqlite else now.replace(tzinfo=None).isoformat(sep=" "),
              "default_plan": default_plan}
    t = time.perf_counter()
    with database.write(engine) as conn:
        for statement in floor_sql(sqlite):
            conn.execute(sa.text(statement), params)
    floor_s = time.perf_counter() - t
    assert redrift(engine, "floor") == drifted, "the floor did not repair every drifted row"
    vacuum(engine)

    log("(a) creditsync converge")
    t = time.perf_counter()
    full = convergence.converge(engine, trigger="cli", actor="cli", pol=pol, now=now,
                                batch_size=args.batch_size)
    converge_s = time.perf_counter() - t
    assert (full.repaired, full.failed) == (drifted, 0), full.line()
    vacuum(engine)

    log("(b) steady state: converge with nothing drifted")
    t = time.perf_counter()
    steady = convergence.converge(engine, trigger="cli", actor="cli", pol=pol, now=now,
                                  batch_size=args.batch_size)
    steady_s = time.perf_counter() - t
    assert steady.drifted == 0, steady.line()

    if args.ticks:
        log("(e) the incremental tick with nothing changed")
        t = time.perf_counter()
        idle = convergence.tick(engine, pol=pol, now=now + dt.timedelta(minutes=20),
                                batch_size=args.batch_size)
        ticks["tick_idle_1m_s"] = time.perf_counter() - t
        assert idle.scanned == 0, idle.line()
        log("(f) the tick with 1,000 subscription changes, 500 ended periods, 200 expiries")
        ticks["tick_1m_s"] = timed_tick(engine, pol, now + dt.timedelta(minutes=30),
                                        args.batch_size, f"(f) tick at {args.instances:,}")

    sample = min(ORIGINAL_SAMPLE, args.instances)
    log(f"(d) the original per-row approach on {sample:,} instances")
    with database.read(engine) as conn:
        ids = list(conn.execute(sa.text(
            "SELECT instance_id FROM instances WHERE instance_id LIKE :p ORDER BY instance_id "
            "LIMIT :n"), {"p": PREFIX + "%", "n": sample}).scalars())
    per_row_sample_s = original_approach(engine, ids, now)
    per_row_s = per_row_sample_s / sample * args.instances

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result |= {
        "dialect": engine.dialect.name, "instances": args.instances, "drifted": drifted,
        "converge_s": round(converge_s, 3), "floor_s": round(floor_s, 3),
        "steady_scan_s": round(steady_s, 3), "per_row_s": round(per_row_s, 1),
        "per_row_ms_each": round(per_row_sample_s / sample * 1000, 3),
        "converge_over_floor": round(converge_s / floor_s, 2),
        "per_row_over_converge": round(per_row_s / converge_s, 1),
        "peak_rss_mb": round(peak, 1),
    }
    if args.ticks:
        result |= {key: round(value, 4) for key, value in ticks.items()}
        result["tick_idle_over_steady"] = round(ticks["tick_idle_1m_s"] / steady_s, 4)
        result["tick_1m_over_100k"] = round(ticks["tick_1m_s"] / ticks["tick_100k_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
