"""`credits.low` thresholds: percentages of the period's allocation, and which ones a spend
crosses. Pure: `events` reads and writes the per-instance state around these functions.

Thresholds are held as basis points (`20%` → 2000, `2.5%` → 250), highest first, so the
arithmetic stays in integers: an instance is at or below threshold `t` when
`remaining × 10000 ≤ t × allocation`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from creditsync import errors

DEFAULT = (2000, 500)  # 20%, 5%
TEXT_DEFAULT = "20%,5%"
_PERCENT = re.compile(r"^(\d{1,3})(?:\.(\d{1,2}))?%?$")
Thresholds = tuple[int, ...]


def parse(text: str, *, where: str = "CREDITSYNC_LOW_CREDIT_THRESHOLDS") -> Thresholds:
    """`20%,5%` (the `%` optional, up to two decimals) → `(2000, 500)`; `""` or `none`: no
    `credits.low` events. Raises `ConfigError` saying what is wrong."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    found: set[int] = set()
    for part in text.split(","):
        match = _PERCENT.match(part.strip())
        points = (int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))
                  if match else -1)
        if not 0 < points < 10000:
            raise errors.ConfigError(
                f"{where}={text!r}: {part.strip()!r} is not a percentage between 0 and 100 "
                "(exclusive); use a comma-separated list such as 20%,5%")
        found.add(points)
    return tuple(sorted(found, reverse=True))


def text_of(thresholds: Iterable[int]) -> str:
    """`(2000, 250)` → `20%,2.5%` (`none` for no thresholds): what `parse` reads."""
    parts = [f"{t // 100}%" if t % 100 == 0 else f"{t / 100:g}%" for t in thresholds]
    return ",".join(parts) or "none"


def percent(threshold: int) -> float | int:
    """A threshold as the percentage payloads carry (`2000` → `20`, `250` → `2.5`)."""
    return threshold // 100 if threshold % 100 == 0 else threshold / 100


def at_or_below(threshold: int, remaining: int, allocation: int) -> bool:
    return allocation > 0 and remaining * 10000 <= threshold * allocation


def decode_sent(text: str | None) -> frozenset[int]:
    return frozenset(int(part) for part in (text or "").split(",") if part)


def encode_sent(sent: Iterable[int]) -> str | None:
    return ",".join(str(t) for t in sorted(sent, reverse=True)) or None


def after_spend(
    thresholds: Thresholds, sent: frozenset[int], before: int, after: int, allocation: int,
) -> tuple[list[int], frozenset[int]]:
    """The thresholds a spend from `before` to `after` remaining credits sends (highest
    first), and the period's sent set afterwards.

    A threshold is sent once per period; one the balance was back above before this spend
    (a top-up, a plan upgrade) is armed again.
    """
    armed_again = {t for t in sent if not at_or_below(t, before, allocation)}
    still = sent - armed_again
    fire = [t for t in thresholds if t not in still and at_or_below(t, after, allocation)]
    return fire, still | frozenset(fire)
