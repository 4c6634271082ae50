"""The clock: every "now" creditsync acts on comes from here (tests pass their own `now`)."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)
