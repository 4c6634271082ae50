"""Property: random interleavings of reserve / commit / release / consume / expire / reset
(and bonus grants) agree with a small reference model, the held credits always equal the
open holds, nothing is ever overspent, and the ledger replays to the numbers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Engine

from creditsync import convergence, enums, errors, instances, reservations, usage
from tests.core.helpers import RESET, instance
from tests.support.holds import assert_holds_match
from tests.support.ledger import assert_ledger_replays
from tests.support.times import T0

MINUTE = dt.timedelta(minutes=1)


@dataclasses.dataclass
class Hold:
    id: str
    amount: int
    expires_at: dt.datetime
    status: str = "held"
    committed: int | None = None


class Model:
    """What the numbers must be: plan credits first, then bonus; holds not spendable."""

    def __init__(self, total: int) -> None:
        self.total, self.used, self.bonus = total, 0, 0
        self.holds: list[Hold] = []

    @property
    def held(self) -> int:
        return sum(h.amount for h in self.holds if h.status == "held")

    def spendable(self) -> int:
        return max(max(self.total - self.used, 0) + self.bonus - self.held, 0)

    def expire(self, now: dt.datetime) -> None:
        for hold in self.holds:
            if hold.status == "held" and hold.expires_at <= now:
                hold.status = "expired"

    def make_room(self, amount: int, now: dt.datetime) -> bool:
        """As the core: when short, holds past their TTL are expired first."""
        if amount > self.spendable():
            self.expire(now)
        return amount <= self.spendable()

    def charge(self, amount: int) -> None:
        from_plan = min(amount, max(self.total - self.used, 0))
        from_bonus = min(amount - from_plan, self.bonus)
        self.used += amount - from_bonus
        self.bonus -= from_bonus


class Machine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.id = f"p{uuid.uuid4().hex[:12]}"
        self.now = T0
        instances.provision(engine, self.id, now=self.now, pol=RESET)
        self.model = Model(instance(engine, self.id).credits_total)
        self.keys = 0

    def _key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    @rule(amount=st.integers(1, 60))
    def consume(self, amount: int) -> None:
        fits = self.model.make_room(amount, self.now)
        try:
            usage.consume(self.engine, self.id, amount, self._key(), now=self.now, pol=RESET)
        except errors.InsufficientCredits as exc:
            remaining = exc.remaining
            assert not fits
            assert remaining == self.model.spendable()
            return
        assert fits
        self.model.charge(amount)

    @rule(target=holds, amount=st.integers(1, 60), ttl=st.integers(1, 10))
    def reserve(self, amount: int, ttl: int) -> Hold | None:
        fits = self.model.make_room(amount, self.now)
        try:
            found = reservations.reserve(self.engine, self.id, amount, self._key(),
                                         ttl=ttl * MINUTE, now=self.now, pol=RESET)
        except errors.InsufficientCredits:
            assert not fits
            return None
        assert fits
        hold = Hold(found.id, amount, self.now + ttl * MINUTE)
        self.model.holds.append(hold)
        return hold

    @rule(hold=holds, part=st.floats(0, 1.2))
    def commit(self, hold: Hold | None, part: float) -> None:
        if hold is None:
            return
        amount = int(hold.amount * part)
        if hold.status == "held" and hold.expires_at <= self.now:
            self.model.expire(self.now)  # as the core: all the instance's due holds
        try:
            found = reservations.commit(self.engine, hold.id, amount, now=self.now, pol=RESET)
        except errors.InvalidRequest:
            assert hold.status == "held"
            assert amount > hold.amount
            return
        except errors.Conflict:
            assert hold.status != "held"
            assert hold.status != "committed" or hold.committed != amount
            return
        if hold.status == "committed":
            assert found.replayed
            return
        assert hold.status == "held"
        hold.status, hold.committed = "committed", amount
        self.model.charge(amount)

    @rule(hold=consumes(holds))
    def release(self, hold: Hold | None) -> None:
        if hold is None:
            return
        try:
            found = reservations.release(self.engine, hold.id, now=self.now)
        except errors.Conflict:
            assert hold.status == "committed"
            return
        if hold.status == "held" and hold.expires_at <= self.now:
            self.model.expire(self.now)  # settled as such before the release, with the
            # instance's other due holds
        assert found.status == (hold.status if hold.status != "held" else "released")
        if hold.status == "held":
            hold.status = "released"

    @rule(minutes=st.integers(1, 12))
    def expire(self, minutes: int) -> None:
        self.now += minutes * MINUTE
        reservations.expire_due(self.engine, now=self.now)
        self.model.expire(self.now)

    @rule()
    def monthly_reset(self) -> None:
        self.now = instance(self.engine, self.id).period_end + MINUTE
        convergence.converge(self.engine, trigger="timer", actor=enums.Actor.TIMER,
                             instance_ids=[self.id], now=self.now, pol=RESET)
        self.model.used = 0

    @rule(amount=st.integers(1, 50))
    def grant_bonus(self, amount: int) -> None:
        usage.adjust_bonus(self.engine, self.id, amount, "property", now=self.now)
        self.model.bonus += amount

    @invariant()
    def agrees_with_the_model(self) -> None:
        row = instance(self.engine, self.id)
        assert (row.credits_used_month, row.bonus_credits, row.credits_held) == (
            self.model.used, self.model.bonus, self.model.held)
        # never overspent: what is used and held fits in the plan and the bonus
        assert row.credits_used_month <= row.credits_total
        assert row.credits_held <= row.credits_total - row.credits_used_month + row.bonus_credits
        found = instances.credits(self.engine, self.id, now=self.now, pol=RESET)
        assert found.credits_remaining == self.model.spendable()

    def teardown(self) -> None:
        assert_holds_match(self.engine)
        assert_ledger_replays(self.engine)


def test_random_interleavings_agree_with_the_model(engine: Engine) -> None:
    run_state_machine_as_test(
        lambda: Machine(engine),
        settings=settings(max_examples=20, stateful_step_count=25, deadline=None,
                          database=None, suppress_health_check=list(HealthCheck)))
