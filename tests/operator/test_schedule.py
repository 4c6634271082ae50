"""When a CreditSync converges: start-up, interval, plan changes, spec changes, retries."""

from __future__ import annotations

import datetime as dt

from creditsync_operator import schedule, specs
from creditsync_operator.schedule import Decision, LoopState

SPEC = specs.SyncSpec(interval=dt.timedelta(seconds=60))


def decide(state: LoopState, parsed: specs.SyncSpec | specs.SpecError = SPEC, *,
           generation: int = 1, plans: int = 0, now: float = 1000.0) -> Decision | None:
    return schedule.decide(state, parsed, generation=generation, plan_generation=plans,
                           now=now)


def ran(state: LoopState, *, generation: int = 1, plans: int = 0, now: float = 1000.0,
        trigger: str = "tick") -> None:
    schedule.started(state, generation=generation, plan_generation=plans, now=now,
                     trigger=trigger)
    schedule.succeeded(state)


def test_first_turn_is_a_startup_run_then_every_interval() -> None:
    state = LoopState()
    assert decide(state) == Decision("run", "startup", SPEC)
    ran(state, now=1000.0)
    assert decide(state, now=1059.9) is None
    assert decide(state, now=1060.0) == Decision("run", "tick", SPEC)


def test_a_full_scan_runs_on_its_own_interval_and_ticks_fill_the_time_between() -> None:
    spec = specs.SyncSpec(interval=dt.timedelta(seconds=60),
                          full_scan_interval=dt.timedelta(seconds=150))
    state = LoopState()
    assert decide(state, spec) == Decision("run", "startup", spec)
    ran(state, now=1000.0, trigger="startup")  # the start-up run scans everything
    assert decide(state, spec, now=1060.0) == Decision("run", "tick", spec)
    ran(state, now=1060.0)
    assert decide(state, spec, now=1120.0) == Decision("run", "tick", spec)
    ran(state, now=1120.0)
    assert decide(state, spec, now=1150.0) == Decision("run", "full_scan", spec)
    ran(state, now=1150.0, trigger="full_scan")
    assert decide(state, spec, now=1209.0) is None
    assert decide(state, spec, now=1210.0) == Decision("run", "tick", spec)


def test_a_shorter_interval_takes_effect_at_once() -> None:
    state = LoopState()
    ran(state, now=1000.0)
    faster = specs.SyncSpec(interval=dt.timedelta(seconds=2))
    # a new generation scans in full at once, then the new interval counts
    assert decide(state, faster, generation=2, now=1001.0) == Decision("run", "full_scan",
                                                                       faster)
    ran(state, generation=2, now=1001.0, trigger="full_scan")
    assert decide(state, faster, generation=2, now=1002.5) is None
    assert decide(state, faster, generation=2, now=1003.0) == Decision("run", "tick", faster)


def test_a_plan_change_runs_promptly_once() -> None:
    state = LoopState()
    ran(state, now=1000.0)
    assert decide(state, plans=1, now=1000.5) == Decision("run", "plan_change", SPEC)
    ran(state, plans=1, now=1000.5)
    assert decide(state, plans=1, now=1001.0) is None


def test_suspended_is_reported_once_per_generation_and_holds_plan_changes() -> None:
    state = LoopState()
    ran(state, now=1000.0)
    suspended = specs.SyncSpec(suspend=True)
    assert decide(state, suspended, generation=2, plans=1) == Decision("suspended",
                                                                       spec=suspended)
    schedule.reported(state, "suspended", 2)
    assert decide(state, suspended, generation=2, plans=1, now=5000.0) is None
    # resumed: a full scan, which converges the held-back plan change too
    assert decide(state, generation=3, plans=1, now=5000.0) == Decision("run", "full_scan",
                                                                       SPEC)


def test_an_invalid_spec_is_reported_once_per_generation() -> None:
    state = LoopState()
    error = specs.SpecError("spec.interval must be at least 1s")
    assert decide(state, error) == Decision("invalid", error="spec.interval must be at least 1s")
    schedule.reported(state, "invalid", 1)
    assert decide(state, error) is None
    assert decide(state, generation=2) == Decision("run", "startup", SPEC)


def test_a_failed_run_is_retried_with_growing_backoff() -> None:
    state = LoopState()
    schedule.started(state, generation=1, plan_generation=0, now=1000.0)
    assert schedule.failed(state, "startup", 1000.0) == 1.0
    assert decide(state, now=1000.5) is None
    assert decide(state, now=1001.0) == Decision("run", "startup", SPEC)
    schedule.started(state, generation=1, plan_generation=0, now=1001.0)
    assert schedule.failed(state, "startup", 1001.0) == 2.0
    assert [schedule.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    ran(state, now=1003.0)
    assert state.failures == 0
    assert decide(state, now=1010.0) is None


def test_a_run_skipped_for_the_lock_is_retried_shortly() -> None:
    state = LoopState()
    schedule.started(state, generation=1, plan_generation=0, now=1000.0)
    schedule.skipped(state, "startup", 1000.0)
    assert decide(state, now=1001.0) is None
    assert decide(state, now=1000.0 + schedule.LOCK_RETRY) == Decision("run", "startup", SPEC)
