"""When a `CreditSync` converges next, and why: a pure function of the loop's state.

The `CreditSync` daemon (`sync.converge`) asks `decide()` every fraction of a second against
the live spec, so a changed `interval`, `suspend` or `dryRun` takes effect at once, without a
restart:

- the first turn of a loop is a `startup` run (a full scan);
- a failed run (database down, lock held elsewhere) is retried when its backoff is over;
- a new spec generation (resumed, dry run switched on or off, ...) scans in full now: a
  changed spec reports on every instance at once (a plan change held back meanwhile too);
- a CreditPlan change makes a `plan_change` tick promptly;
- a `full_scan` once `fullScanInterval` has passed since the last full scan started;
- otherwise a `tick` once `interval` has passed since the last run started.

A suspended or invalid spec is reported once per generation and then waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from creditsync import enums
from creditsync_operator import specs

STARTUP, TICK, FULL_SCAN = enums.Trigger.STARTUP, enums.Trigger.TICK, enums.Trigger.FULL_SCAN
PLAN_CHANGE = enums.Trigger.PLAN_CHANGE
FULL = frozenset({STARTUP, FULL_SCAN})  # the runs that scan every instance
MAX_BACKOFF = 60.0
LOCK_RETRY = 2.0

Kind = Literal["run", "suspended", "invalid"]


@dataclass
class LoopState:
    """What one `CreditSync` loop remembers between turns (kept in the object's memo)."""

    last_run: float | None = None  # monotonic start of the last run
    last_full: float | None = None  # monotonic start of the last full scan (startup included)
    seen_generation: int | None = None
    seen_plan_generation: int = 0
    reported: tuple[Kind, int | None] | None = None
    retry_trigger: str | None = None
    retry_at: float = 0.0
    failures: int = 0
    degraded: str | None = None  # reason of the Degraded written last ("" not; None unknown)
    marketplace: str | None = None  # why the last audit batch got no answer (None: it did)
    backlog: dict[str, int] | None = None


@dataclass(frozen=True)
class Decision:
    kind: Kind
    trigger: str = ""
    spec: specs.SyncSpec | None = None
    error: str = ""


def decide(
    state: LoopState,
    parsed: specs.SyncSpec | specs.SpecError,
    *,
    generation: int | None,
    plan_generation: int,
    now: float,
) -> Decision | None:
    """What to do now, or None to keep waiting."""
    if isinstance(parsed, specs.SpecError):
        if state.reported == ("invalid", generation):
            return None
        return Decision("invalid", error=str(parsed))
    if parsed.suspend:
        if state.reported == ("suspended", generation):
            return None
        return Decision("suspended", spec=parsed)
    if state.retry_trigger is not None:
        if now >= state.retry_at:
            return Decision("run", state.retry_trigger, parsed)
        return None
    if state.last_run is None:
        return Decision("run", STARTUP, parsed)
    if generation != state.seen_generation:  # covers a plan change held back meanwhile
        return Decision("run", FULL_SCAN, parsed)
    if plan_generation != state.seen_plan_generation:
        return Decision("run", PLAN_CHANGE, parsed)
    if now - (state.last_full or state.last_run) >= parsed.full_scan_interval.total_seconds():
        return Decision("run", FULL_SCAN, parsed)
    if now - state.last_run >= parsed.interval.total_seconds():
        return Decision("run", TICK, parsed)
    return None


def started(state: LoopState, *, generation: int | None, plan_generation: int,
            now: float, trigger: str = TICK) -> None:
    """Record that a run starts now for this generation and catalog change."""
    state.last_run = now
    if trigger in FULL:
        state.last_full = now
    state.seen_generation = generation
    state.seen_plan_generation = plan_generation
    state.reported = None
    state.retry_trigger = None


def succeeded(state: LoopState) -> None:
    state.failures = 0


def failed(state: LoopState, trigger: str, now: float) -> float:
    """Record a failed run; returns the backoff before it is retried (1 s, 2 s … 60 s)."""
    state.failures += 1
    delay = backoff(state.failures)
    state.retry_trigger = trigger
    state.retry_at = now + delay
    return delay


def skipped(state: LoopState, trigger: str, now: float) -> None:
    """Another runner held the convergence lock: try again shortly."""
    state.retry_trigger = trigger
    state.retry_at = now + LOCK_RETRY


def reported(state: LoopState, kind: Kind, generation: int | None) -> None:
    state.reported = (kind, generation)
    state.seen_generation = generation


def backoff(failures: int) -> float:
    return min(2.0 ** max(failures - 1, 0), MAX_BACKOFF)
