"""Untrusted JSON and times at the doors: refused unless they can be stored and read back.

`json.loads` recurses once per nesting level (a `RecursionError` past about 1,000 levels),
accepts `NaN`/`Infinity` and reads `\\ud800` escapes into strings that cannot be encoded as
UTF-8, so cannot be stored, logged or listed. `loads()` parses with those failures turned into
`Refused`; `check()` refuses a parsed value nested deeper than `MAX_DEPTH`, or holding text that
is not UTF-8 or has a NUL (PostgreSQL cannot hold one), or a number that is not finite.
`utc()` and `from_timestamp()` refuse times outside `EARLIEST`..`LATEST`, so later arithmetic
(an expiry plus its grace, a period plus a month) cannot overflow.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

MAX_DEPTH = 32
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


class Refused(ValueError):
    """The input cannot be accepted; the message says why."""


def loads(text: str | bytes) -> Any:
    """JSON from untrusted text; raises `Refused`."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise Refused("it is nested too deeply") from exc
    except ValueError as exc:  # syntax, bad UTF-8, an integer of more than 4,300 digits
        raise Refused(f"it is not JSON ({exc})") from exc


def check(value: Any) -> None:
    """Raise `Refused` unless `value` (parsed JSON) is shallow, finite, UTF-8 text only."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(f"it is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            _text(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Refused(f"it holds the number {item}, which is not finite")
        elif isinstance(item, dict):
            for key, inner in item.items():
                _text(key)
                stack.append((inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in item)


def _text(text: str) -> None:
    if "\x00" in text:
        raise Refused("it holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Refused("it holds text that is not Unicode (a lone surrogate escape such as "
                      "\\ud800)") from exc


def utc(moment: dt.datetime) -> dt.datetime:
    """An aware `moment` in UTC; raises `Refused` outside `EARLIEST`..`LATEST`."""
    try:
        found = moment.astimezone(dt.UTC)
    except OverflowError as exc:  # year 1 at +14:00, year 9999 at -14:00
        raise Refused(f"{moment.isoformat()} is outside the calendar") from exc
    if not EARLIEST <= found < LATEST:
        raise Refused(f"{found.isoformat()} is not between {EARLIEST.year} and {LATEST.year}")
    return found


def from_timestamp(seconds: float) -> dt.datetime:
    """Seconds since the epoch as a UTC time; raises `Refused` outside `EARLIEST`..`LATEST`."""
    try:
        found = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, ValueError, OSError) as exc:  # NaN, infinities, huge, years < 1
        raise Refused(f"{seconds} seconds since the epoch is outside the calendar") from exc
    return utc(found)
