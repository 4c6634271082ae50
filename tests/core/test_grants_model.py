"""State machine: random grants (with and without expiry and priority), consumes, take-backs,
voids, expiries by the loop, plan changes and monthly resets (with rollover) against a
reference model — the spending order, every balance, every grant, and the ledger's replay of
all of them agree after every step, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import itertools
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Engine

from creditsync import catalog, convergence, errors, grants, instances, plans, policy, usage
from creditsync.storage import database, models
from tests.core.helpers import HOUR, RESET, accept, instance
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

ROLLOVER = plans.Rollover(max_credits=300, expires_after=dt.timedelta(days=10))
CATALOG = plans.Catalog((
    plans.Plan("free", 100, default=True, rollover=plans.Rollover(60, dt.timedelta(days=20))),
    plans.Plan("starter", 500),  # no rollover
    plans.Plan("pro", 1000, rollover=ROLLOVER),
    plans.Plan("scale", 2000, rollover=plans.Rollover(50, dt.timedelta(days=40))),
))
CREDITS = {p.id: p.monthly_credits for p in CATALOG.plans}
_ids = itertools.count()


@dataclasses.dataclass
class Model:
    id: str
    amount: int
    remaining: int
    priority: int
    expires_at: dt.datetime | None
    created_at: dt.datetime
    status: str = "live"

    def order(self) -> tuple[object, ...]:
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        return (self.priority, self.expires_at is None, self.expires_at or far,
                self.created_at, self.id)


def _spend(live: list[Model], amount: int) -> None:
    """The reference spending order: priority, soonest expiry (none last), oldest."""
    for g in sorted(live, key=Model.order):
        take = min(amount, g.remaining)
        g.remaining -= take
        amount -= take
        if g.remaining == 0:
            g.status = "spent"
        if amount == 0:
            return
    assert amount == 0


class Grants(RuleBasedStateMachine):
    engine: Engine

    @initialize()
    def start(self) -> None:
        self.name = f"g{next(_ids)}-{uuid.uuid4().hex[:6]}"
        self.now = T0
        instances.provision(self.engine, self.name, now=self.now, pol=RESET)
        self.plan, self.used = "free", 0
        self.period_end = policy.add_months(T0, 1)
        self.grants: dict[str, Model] = {}

    # -- the reference model's own steps ---------------------------------------------------

    def saved(self) -> tuple[object, ...]:
        """The model's state, to restore when the system refuses (and rolls back) a step."""
        return copy.deepcopy((self.grants, self.used, self.period_end))

    def restore(self, state: tuple[object, ...]) -> None:
        self.grants, self.used, self.period_end = state  # type: ignore[assignment]

    def live(self) -> list[Model]:
        return [g for g in self.grants.values() if g.status == "live"]

    def expire(self) -> None:
        for g in self.live():
            if g.expires_at is not None and g.expires_at <= self.now:
                g.status, g.remaining = "expired", 0

    def reset_if_due(self, *, written: bool = True) -> None:
        """The monthly reset, with the plan's rollover of the period's unused credits
        (`written` False: the system rolled it back, so there is no grant id to find)."""
        if self.now < self.period_end:
            return
        rule = CATALOG.get(self.plan)
        unused = max(CREDITS[self.plan] - self.used, 0)
        ended = self.period_end
        self.used = 0
        while self.period_end <= self.now:
            self.period_end = policy.add_months(self.period_end, 1)
        if rule is not None and rule.rollover is not None:
            amount = min(unused, rule.rollover.max_credits)
            expires = ended + rule.rollover.expires_after
            if amount > 0 and expires > self.now:
                found = self._new_rollover_grant() if written else "rolled-back"
                self.grants[found] = Model(found, amount, amount, grants.DEFAULT_PRIORITY,
                                           expires, self.now)

    def _new_rollover_grant(self) -> str:
        table = models.GRANTS
        with database.read(self.engine) as conn:
            found = conn.execute(sa.select(table.c.id).where(
                table.c.instance_id == self.name, table.c.source == "rollover",
                table.c.id.not_in(list(self.grants) or [""]))).scalar_one()
        return str(found)

    # -- rules ------------------------------------------------------------------------------

    @rule(amount=st.integers(1, 80), priority=st.sampled_from([0, 10, 50, 50, 100]),
          hours=st.one_of(st.none(), st.integers(1, 24 * 40)),
          keyed=st.booleans())
    def grant(self, amount: int, priority: int, hours: int | None, keyed: bool) -> None:
        expires = None if hours is None else self.now + hours * HOUR
        key = uuid.uuid4().hex if keyed else None
        made = grants.create(self.engine, self.name, amount, reason="test", now=self.now,
                             priority=priority, expires_at=expires, idempotency_key=key)
        self.expire()
        self.grants[made.grant.id] = Model(made.grant.id, amount, amount, priority, expires,
                                           self.now)
        if key is not None:  # the same key again grants nothing more
            again = grants.create(self.engine, self.name, amount, reason="test", now=self.now,
                                  priority=priority, expires_at=expires, idempotency_key=key)
            assert again.replayed
            assert again.grant.id == made.grant.id
            with pytest.raises(errors.Conflict):
                grants.create(self.engine, self.name, amount + 1, reason="test",
                              now=self.now, priority=priority, expires_at=expires,
                              idempotency_key=key)

    @rule(amount=st.integers(1, 400))
    def consume(self, amount: int) -> None:
        refused = None
        try:
            result = usage.consume(self.engine, self.name, amount, uuid.uuid4().hex,
                                   now=self.now, pol=RESET)
        except usage.InsufficientCredits as exc:
            refused = exc
        self.reset_if_due()
        self.expire()
        plan_left = max(CREDITS[self.plan] - self.used, 0)
        bonus = sum(g.remaining for g in self.live())
        if amount > plan_left + bonus:
            assert refused is not None
            assert refused.remaining == plan_left + bonus
            return  # a refusal keeps the reset and the expiries made before it
        assert refused is None
        from_plan = min(amount, plan_left)
        assert (result.from_plan, result.from_bonus) == (from_plan, amount - from_plan)
        self.used += from_plan
        _spend(self.live(), amount - from_plan)

    @rule(amount=st.integers(1, 100))
    def take_back(self, amount: int) -> None:
        state = self.saved()
        self.expire()
        bonus = sum(g.remaining for g in self.live())
        if amount > bonus:
            with pytest.raises(errors.InvalidRequest):
                usage.adjust_bonus(self.engine, self.name, -amount, "take back", now=self.now)
            self.restore(state)
            return
        usage.adjust_bonus(self.engine, self.name, -amount, "take back", now=self.now)
        _spend(self.live(), amount)

    @rule(amount=st.integers(1, 50))
    def adjust_up(self, amount: int) -> None:
        entry = usage.adjust_bonus(self.engine, self.name, amount, "gift", now=self.now)
        self.expire()
        assert entry.grant_id is not None
        self.grants[entry.grant_id] = Model(entry.grant_id, amount, amount,
                                            grants.DEFAULT_PRIORITY, None, self.now)

    @precondition(lambda self: bool(self.grants))
    @rule(pick=st.integers(0, 10**6))
    def void(self, pick: int) -> None:
        chosen = sorted(self.grants)[pick % len(self.grants)]
        state = self.saved()
        self.expire()
        g = self.grants[chosen]
        if g.status != "live":
            with pytest.raises(errors.Conflict):
                grants.void(self.engine, self.name, chosen, now=self.now)
            self.restore(state)
            return
        ended = grants.void(self.engine, self.name, chosen, now=self.now)
        assert ended.amount == g.remaining
        g.status, g.remaining = "voided", 0

    @rule(hours=st.integers(1, 24 * 45))
    def advance(self, hours: int) -> None:
        self.now += hours * HOUR

    @rule()
    def expire_by_the_loop(self) -> None:
        expired = [e for e in grants.expire_due(self.engine, self.now)
                   if e.grant.instance_id == self.name]
        due = {g.id for g in self.live()
               if g.expires_at is not None and g.expires_at <= self.now}
        assert {e.grant.id for e in expired} == due
        self.expire()

    @rule()
    def converge_as_the_period_ends(self) -> None:
        """The loop's tick an hour after the period ended (the monthly reset, and a
        rollover of what was unused)."""
        self.now = max(self.now, self.period_end + HOUR)
        self.converge()

    @rule()
    def converge(self) -> None:
        convergence.converge(self.engine, trigger="timer", actor="timer", now=self.now,
                             instance_ids=[self.name], pol=RESET)
        self.reset_if_due()

    @rule(plan=st.sampled_from(["pro", "scale", "free", "starter"]))
    def change_plan(self, plan: str) -> None:
        """A purchase (usage reset under `Reset`, the period starts now), then converged; a
        reset due before it is not applied: the purchase's period replaces the ended one."""
        self.now += dt.timedelta(seconds=1)  # each purchase newer than the last
        accept(self.engine, self.name, "PaidPlanPurchased", self.now, plan)
        convergence.converge(self.engine, trigger="webhook", actor="webhook", now=self.now,
                             instance_ids=[self.name], pol=RESET)
        self.plan, self.used = plan, 0
        self.period_end = policy.add_months(self.now, 1)

    # -- what must hold after every step ---------------------------------------------------

    @invariant()
    def agrees(self) -> None:
        row = instance(self.engine, self.name)
        with database.read(self.engine) as conn:
            stored = {g.id: g for g in grants.listing_in(conn, self.name)}
        assert set(stored) == set(self.grants)
        for grant_id, want in self.grants.items():
            got = stored[grant_id]
            assert (got.status, got.remaining, got.amount, got.priority, got.expires_at) == (
                want.status, want.remaining, want.amount, want.priority, want.expires_at)
        live = [g.id for g in stored.values() if g.status == "live"]
        assert live == [g.id for g in sorted(self.live(), key=Model.order)]  # spending order
        assert (row.plan_id, row.credits_total, row.credits_used_month, row.bonus_credits) == (
            self.plan, CREDITS[self.plan], self.used, sum(g.remaining for g in self.live()))
        assert_ledger_replays(self.engine, instance_id=self.name)


def test_grants_agree_with_the_reference_model(engine: Engine) -> None:
    with database.write(engine) as conn:
        catalog.replace(conn, CATALOG, T0)

    class Machine(Grants):
        pass

    Machine.engine = engine
    run_state_machine_as_test(Machine, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))
    # the examples went everywhere: rollovers were made, and grants ended every way
    with database.read(engine) as conn:
        table = models.GRANTS
        sources = set(conn.execute(sa.select(table.c.source).distinct()).scalars())
        statuses = set(conn.execute(sa.select(table.c.status).distinct()).scalars())
    assert {"rollover", "admin"} <= sources
    assert statuses == {"live", "spent", "expired", "voided"}
