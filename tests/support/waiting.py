"""Waiting in tests: one helper to poll until something happens, one to check that
something does not happen, both against a deadline (never a bare `time.sleep` before an
assertion).

    wait_for("the pod to start", lambda: pod.ready() or None, timeout=30)
    holds_for("no timer run", lambda: runs("timer") == settled, seconds=3)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0,
             every: float = 0.2, *, ignore: tuple[type[BaseException], ...] = (),
             logs: Callable[[], str] = lambda: "") -> T:
    """Poll `probe` until it returns something truthy and return that; fail with `what`,
    the last answer and `logs()` on timeout. Exceptions of the `ignore` types count as a
    falsy answer (e.g. a resource that does not exist yet)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        with contextlib.suppress(*ignore):
            last = probe()
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    extra = logs()
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
                         + (f"\n{extra}" if extra else ""))


def holds_for(what: str, check: Callable[[], object], seconds: float,
              every: float = 0.2) -> None:
    """Assert that `check()` stays truthy at every poll for `seconds` (a negative
    assertion: something that must not happen within a window does not)."""
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{what}: no longer true after {seconds - deadline + time.monotonic():.1f}s"
        if time.monotonic() >= deadline:
            return
        time.sleep(every)
