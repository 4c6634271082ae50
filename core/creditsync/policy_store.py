"""The `policy` table: the one transition policy every process converges with.

Like the plan catalog, the policy lives in the database, so the webhook path, the API, the
CLI and the operator never disagree: the operator writes it from the `CreditSync` spec,
standalone `creditsync run` from its environment (unless a `CreditSync` wrote it), and every
convergence and every webhook reads it. With nothing stored, the built-in defaults apply.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from creditsync import changes, policy, thresholds
from creditsync.storage import database, models

_p = models.POLICY

DEFAULT_SOURCE = "built-in defaults (nothing stored yet)"
ENVIRONMENT_SOURCE = ("environment of `creditsync run` (CREDITSYNC_USAGE_ON_PLAN_CHANGE, "
                      "CREDITSYNC_EXPIRY_GRACE_PERIOD, CREDITSYNC_LOW_CREDIT_THRESHOLDS)")
CREDITSYNC_PREFIX = "CreditSync "


def creditsync_source(namespace: str | None, name: str | None) -> str:
    return f"{CREDITSYNC_PREFIX}{namespace}/{name}"


@dataclass(frozen=True)
class Effective:
    """The policy in force, where it came from, and when it was written."""

    policy: policy.Policy
    source: str
    updated_at: dt.datetime | None

    @property
    def from_creditsync(self) -> bool:
        return self.source.startswith(CREDITSYNC_PREFIX)


_READ = sa.select(_p).where(_p.c.id == 1)  # built once: a spend reads it every time


def read(conn: Connection) -> Effective:
    row = conn.execute(_READ).first()
    if row is None:
        return Effective(policy.Policy(), DEFAULT_SOURCE, None)
    return Effective(policy.from_row((row.usage_on_plan_change, row.expiry_grace_seconds,
                                      row.low_credit_thresholds)),
                     row.source, row.updated_at)


def load(conn: Connection) -> policy.Policy:
    """The policy to converge with, read inside the caller's transaction."""
    return read(conn).policy


def current(engine: Engine) -> Effective:
    with database.read(engine) as conn:
        return read(conn)


def resolve(engine: Engine, pol: policy.Policy | None) -> policy.Policy:
    """`pol` when a caller (a test, a what-if) names one, else the stored policy."""
    return pol if pol is not None else current(engine).policy


def write(conn: Connection, pol: policy.Policy, source: str, now: dt.datetime) -> bool:
    """Store `pol` as coming from `source`; True when that changed what was stored."""
    found = read(conn)
    if found.updated_at is not None and found.policy == pol and found.source == source:
        return False
    values = {"usage_on_plan_change": pol.usage_on_plan_change,
              "expiry_grace_seconds": int(pol.expiry_grace_period.total_seconds()),
              "low_credit_thresholds": thresholds.text_of(pol.low_credit_thresholds),
              "source": source[:300], "updated_at": now}
    if found.updated_at is None:
        conn.execute(_p.insert().values(id=1, **values))
    else:
        conn.execute(_p.update().where(_p.c.id == 1).values(**values))
    old, new = found.policy.expiry_grace_period, pol.expiry_grace_period
    if old != new:  # the expiries between the two cutoffs change sides: the next tick's
        changes.expiry_window(conn, now - max(old, new), now - min(old, new), now)
    return True


def store(engine: Engine, pol: policy.Policy, source: str, now: dt.datetime) -> bool:
    """`write()` in its own transaction (the operator, from a `CreditSync` spec)."""
    with database.write(engine) as conn:
        return write(conn, pol, source, now)


def write_from_environment(engine: Engine, pol: policy.Policy, now: dt.datetime) -> Effective:
    """Standalone `run`: store its environment's policy unless a `CreditSync` wrote one."""
    with database.write(engine) as conn:
        found = read(conn)
        if found.from_creditsync:
            return found
        write(conn, pol, ENVIRONMENT_SOURCE, now)
        return read(conn)
