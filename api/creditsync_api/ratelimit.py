"""At most one call per key per interval (the manual sync: one per instance every 5 s).

In memory, per process: enough to stop a dashboard button from hammering the database.
Replicas each keep their own window, so N replicas allow N calls per interval at worst.
"""

from __future__ import annotations

import datetime as dt
import math
import threading


class PerKey:
    def __init__(self, interval: dt.timedelta, max_keys: int = 100_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: dt.datetime) -> int | None:
        """None when allowed (and the window starts now), else whole seconds to wait."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return max(math.ceil((self.interval - (now - last)).total_seconds()), 1)
            if len(self._last) >= self.max_keys:
                self._prune(now)
            self._last[key] = now
            return None

    def _prune(self, now: dt.datetime) -> None:
        self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        while len(self._last) >= self.max_keys:  # still full: drop the oldest windows
            self._last.pop(next(iter(self._last)))
