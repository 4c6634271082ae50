"""The stored policy: one row every process converges with, and who wrote it."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from creditsync import convergence, inbox, instances, policy, policy_store, usage
from tests.core.helpers import HOUR, instance
from tests.support.times import T0

PRESERVE = policy.Policy("Preserve", dt.timedelta(hours=6))


def test_nothing_stored_means_the_built_in_defaults(engine: Engine) -> None:
    found = policy_store.current(engine)
    assert (found.policy, found.source, found.updated_at) == (
        policy.Policy(), policy_store.DEFAULT_SOURCE, None)


def test_run_stores_its_environment_unless_a_creditsync_wrote_the_policy(
    engine: Engine,
) -> None:
    stored = policy_store.write_from_environment(engine, PRESERVE, T0)
    assert (stored.policy, stored.source) == (PRESERVE, policy_store.ENVIRONMENT_SOURCE)
    with engine.begin() as conn:
        policy_store.write(conn, policy.Policy("Reset"),
                           policy_store.creditsync_source("billing", "main"), T0 + HOUR)
    kept = policy_store.write_from_environment(engine, PRESERVE, T0 + 2 * HOUR)
    assert (kept.policy, kept.source) == (policy.Policy("Reset"), "CreditSync billing/main")
    assert kept.updated_at == T0 + HOUR


def test_every_convergence_reads_the_stored_policy(engine: Engine) -> None:
    with engine.begin() as conn:
        policy_store.write(conn, PRESERVE, policy_store.creditsync_source("ns", "cs"), T0)
    instances.provision(engine, "w", now=T0)
    usage.consume(engine, "w", 40, "k", now=T0 + HOUR)
    changed = inbox.Incoming("w", "PaidPlanChanged", T0 + 2 * HOUR, "pro", None, {})
    assert inbox.ingest(engine, changed, now=T0 + 2 * HOUR).status == "applied"
    row = instance(engine, "w")
    assert (row.plan_id, row.credits_total, row.credits_used_month) == ("pro", 5000, 40)
    # the grace period too: a cancelled plan outlives its expiry by the stored 6 hours
    cancelled = inbox.Incoming("w", "PaidPlanAutoRenewalCancelled", T0 + 3 * HOUR, "pro",
                               T0 + 4 * HOUR, {})
    assert inbox.ingest(engine, cancelled, now=T0 + 3 * HOUR).status == "applied"
    convergence.converge(engine, trigger="timer", actor="timer", now=T0 + 9 * HOUR)
    assert instance(engine, "w").plan_id == "pro"
    convergence.converge(engine, trigger="timer", actor="timer", now=T0 + 10 * HOUR)
    assert instance(engine, "w").plan_id == "free"
