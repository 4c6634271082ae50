"""The `plans` table: read the catalog, seed it, and replace or change it as a whole.

Every change is validated as a complete catalog first, so a bad change writes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import changes, plans
from creditsync.storage import database, models

_plans = models.PLANS


@dataclass(frozen=True)
class CatalogChange:
    """Which plans a write added, changed (credits or aliases) or removed."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def touched(self) -> tuple[str, ...]:
        return self.added + self.changed + self.removed


def read_plans(conn: Connection) -> list[plans.Plan]:
    rows = conn.execute(sa.select(_plans).order_by(_plans.c.monthly_credits, _plans.c.id))
    return [
        plans.Plan(row.id, row.monthly_credits, tuple(row.aliases or ()), row.display_name,
                   row.is_default, _rollover(row.rollover_max_credits,
                                             row.rollover_expires_after_s))
        for row in rows
    ]


def _rollover(max_credits: int | None, expires_after_s: int | None) -> plans.Rollover | None:
    if max_credits is None or expires_after_s is None:
        return None
    return plans.Rollover(max_credits, dt.timedelta(seconds=expires_after_s))


def load(conn: Connection) -> plans.Catalog:
    """The catalog as stored; raises `CatalogError` if the table is empty or invalid."""
    found = read_plans(conn)
    if not found:
        raise plans.CatalogError(
            "the plans table is empty: run `creditsync plans apply FILE` or start "
            "`creditsync run`, which seeds the built-in plans"
        )
    return plans.Catalog(tuple(found))


def current(engine: Engine) -> list[plans.Plan]:
    """The stored plans, cheapest first (empty when nothing is stored)."""
    with database.read(engine) as conn:
        return read_plans(conn)


def require(engine: Engine) -> plans.Catalog:
    """The stored catalog; raises `CatalogError` (what to run) when it is empty."""
    with database.read(engine) as conn:
        return load(conn)


def seed_if_empty(engine: Engine, source: Path | None, now: dt.datetime) -> bool:
    """`seed()` in its own transaction."""
    with database.write(engine) as conn:
        return seed(conn, source, now)


def replace_all(engine: Engine, catalog: plans.Catalog, now: dt.datetime) -> CatalogChange:
    """`replace()` in its own transaction."""
    with database.write(engine) as conn:
        return replace(conn, catalog, now)


def put(engine: Engine, plan: plans.Plan, now: dt.datetime) -> CatalogChange:
    """`upsert()` in its own transaction (a `CreditPlan` created or changed)."""
    with database.write(engine) as conn:
        return upsert(conn, plan, now)


def remove(engine: Engine, plan_id: str, now: dt.datetime) -> CatalogChange:
    """`delete()` in its own transaction (a `CreditPlan` deleted)."""
    with database.write(engine) as conn:
        return delete(conn, plan_id, now)


def seed(conn: Connection, source: Path | None, now: dt.datetime) -> bool:
    """Fill an empty table from `source` (or the built-in defaults); True if it wrote."""
    database.lock_catalog(conn)
    if conn.execute(sa.select(sa.func.count()).select_from(_plans)).scalar_one():
        return False
    catalog = plans.load_file(source) if source else plans.DEFAULT_CATALOG
    # nothing converged against an empty catalog: no tick has anything to redo
    _write(conn, {plan.id: plan for plan in catalog.plans}, now, announce=False)
    return True


def replace(conn: Connection, catalog: plans.Catalog, now: dt.datetime) -> CatalogChange:
    """Make the table hold exactly `catalog`."""
    database.lock_catalog(conn)
    return _write(conn, {plan.id: plan for plan in catalog.plans}, now)


def upsert(conn: Connection, plan: plans.Plan, now: dt.datetime) -> CatalogChange:
    """Add or change one plan (a `CreditPlan`); the resulting catalog must stay valid."""
    database.lock_catalog(conn)
    wanted = {p.id: p for p in read_plans(conn)}
    wanted[plan.id] = plan
    return _write(conn, wanted, now)


def delete(conn: Connection, plan_id: str, now: dt.datetime) -> CatalogChange:
    """Remove one plan. Instances on it are left alone and reported, never downgraded."""
    database.lock_catalog(conn)
    wanted = {p.id: p for p in read_plans(conn) if p.id != plan_id}
    return _write(conn, wanted, now, allow_no_default=True)


def _write(
    conn: Connection, wanted: dict[str, plans.Plan], now: dt.datetime,
    allow_no_default: bool = False, announce: bool = True,
) -> CatalogChange:
    plans.validate(list(wanted.values()), require_default=not allow_no_default)
    existing = {p.id: p for p in read_plans(conn)}
    added = tuple(sorted(set(wanted) - set(existing)))
    removed = tuple(sorted(set(existing) - set(wanted)))
    changed = tuple(sorted(pid for pid in set(wanted) & set(existing)
                           if wanted[pid] != existing[pid]))
    if removed:
        conn.execute(_plans.delete().where(_plans.c.id.in_(removed)))
    for pid in changed:
        conn.execute(_plans.delete().where(_plans.c.id == pid))
    rows = [
        {"id": p.id, "monthly_credits": p.monthly_credits, "aliases": list(p.aliases),
         "display_name": p.display_name, "is_default": p.default, "updated_at": now,
         "rollover_max_credits": p.rollover.max_credits if p.rollover else None,
         "rollover_expires_after_s": (int(p.rollover.expires_after.total_seconds())
                                      if p.rollover else None)}
        for pid, p in wanted.items() if pid in added or pid in changed
    ]
    if rows:
        conn.execute(_plans.insert(), rows)
    change = CatalogChange(added, changed, removed)
    if announce:  # the next tick converges the instances on these plans
        changes.plans_changed(conn, change.touched, now)
    return change
