"""The fixed moment the tests build their times from."""

from __future__ import annotations

import datetime as dt

T0 = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)
