"""`creditsync dev seed`: fill a database with N instances, exactly D of them drifted.

Set-based: one INSERT … SELECT per table over a generated series, so a million rows take
seconds. Drifted rows are spread evenly and reproduce the original bug: a paid instance
stuck at the default plan's credits (or, for a free instance, a hand-edited allocation).
Nothing is converged. Each instance is inserted with its copy of the subscription inserted
after it (the triggers that keep the copy then find nothing to write).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import catalog
from creditsync.storage import database

# instance n (1..N): n % 10 in 0..5 → default plan, 6-7 → starter, 8 → pro, 9 → scale
PAID = {6: "starter", 7: "starter", 8: "pro", 9: "scale"}
STRIDES = (1_000_003, 1_000_033)


def drifted_count(instances: int, percent: float) -> int:
    return round(instances * percent / 100)


def _dialect_sql(sqlite: bool) -> dict[str, str]:
    if sqlite:
        return {
            "series": "WITH RECURSIVE g(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM g "
                      "WHERE n < :last)",
            "id": "printf('%s%07d', :prefix, n)",
            "days_ago": "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (n % 28) || ' days') "
                        "|| '.000000'",
            "days_ahead": "strftime('%Y-%m-%d %H:%M:%S', :now, '+' || (30 - n % 28) || "
                          "' days') || '.000000'",
            "now": ":now",
        }
    return {
        "series": "WITH g(n) AS (SELECT generate_series(CAST(:first AS bigint), "
                  "CAST(:last AS bigint)))",
        "id": ":prefix || lpad(n::text, 7, '0')",
        "days_ago": "CAST(:now AS timestamptz) - (n % 28) * interval '1 day'",
        "days_ahead": "CAST(:now AS timestamptz) + (30 - n % 28) * interval '1 day'",
        "now": "CAST(:now AS timestamptz)",
    }


def seed(
    engine: Engine, instances: int, drifted_percent: float, *, now: dt.datetime,
    prefix: str = "seed-", chunk: int = 200_000,
) -> int:
    """Insert `instances` instances; returns how many of them are drifted."""
    if instances < 0 or not 0 <= drifted_percent <= 100:
        raise ValueError("--instances must be >= 0 and --drifted between 0 and 100")
    drifted = drifted_count(instances, drifted_percent)
    sqlite = database.is_sqlite(engine)
    sql = _dialect_sql(sqlite)
    stamp: object = now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if sqlite else now
    with database.read(engine) as conn:
        cat = catalog.load(conn)
    default = cat.default
    credit_of = {plan.id: plan.monthly_credits for plan in cat.plans}
    paid = {k: v for k, v in PAID.items() if v in credit_of}
    plan_case = "CASE n % 10 " + " ".join(
        f"WHEN {k} THEN '{v}'" for k, v in paid.items()) + f" ELSE '{default.id}' END"
    credits_case = "CASE n % 10 " + " ".join(
        f"WHEN {k} THEN {credit_of[v]}" for k, v in paid.items()
    ) + f" ELSE {default.monthly_credits} END"
    paid_keys = ", ".join(str(k) for k in paid) or "-1"
    # n -> (n * P) mod N permutes 1..N (P a prime not dividing N), so exactly D rows
    # satisfy "< D", scattered over every plan
    stride = next(p for p in STRIDES if instances % p)
    is_drifted = f"((n * {stride}) % :total) < :d"
    instance_sql = f"""
        {sql['series']}
        INSERT INTO instances (instance_id, plan_id, credits_total, bonus_credits,
            credits_used_month, period_start, period_end, applied_rev, version, created_at,
            updated_at, last_synced_at, paid_plan_id, subscription_rev, subscription_time)
        SELECT {sql['id']},
            CASE WHEN {is_drifted} THEN '{default.id}' ELSE {plan_case} END,
            CASE WHEN {is_drifted} AND n % 10 IN ({paid_keys}) THEN {default.monthly_credits}
                 WHEN {is_drifted} THEN {default.monthly_credits} + 1
                 ELSE {credits_case} END,
            0, (n * 7) % 50, {sql['days_ago']}, {sql['days_ahead']},
            CASE WHEN n % 10 IN ({paid_keys}) THEN 1 ELSE 0 END, 0,
            {sql['now']}, {sql['now']}, NULL,
            CASE WHEN n % 10 IN ({paid_keys}) THEN {plan_case} END,
            CASE WHEN n % 10 IN ({paid_keys}) THEN 1 END,
            CASE WHEN n % 10 IN ({paid_keys}) THEN {sql['days_ago']} END
        FROM g
    """
    subscription_sql = f"""
        {sql['series']}
        INSERT INTO subscriptions (instance_id, plan_id, status, expires_at, rev, source_time,
            updated_at)
        SELECT {sql['id']}, {plan_case}, 'active', NULL, 1, {sql['days_ago']}, {sql['now']}
        FROM g WHERE n % 10 IN ({paid_keys})
    """
    with database.write(engine) as conn:
        for first in range(1, instances + 1, chunk):
            params = {"first": first, "last": min(first + chunk - 1, instances),
                      "prefix": prefix, "now": stamp, "d": drifted, "total": instances}
            conn.execute(sa.text(instance_sql), params)
            conn.execute(sa.text(subscription_sql), params)
    return drifted
