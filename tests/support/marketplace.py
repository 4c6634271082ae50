"""The marketplace STAND-IN for tests (not Wix): `creditsync.marketplace_standin`, served on
loopback for one test, and a client pointed at it.

The real marketplace API cannot run here; the stand-in serves its two endpoints as Wix's
docs describe them (`POST /oauth2/token`, `GET /apps/v1/instance`) and can be told what to
say and how to fail. It lives in the package so that `creditsync dev marketplace` serves the
same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from creditsync import marketplace, marketplace_standin

APP_ID = "test-app"
APP_SECRET = "test-app-secret-0123456789"


@contextmanager
def serving(app_secret: str = APP_SECRET) -> Iterator[marketplace_standin.Running]:
    """A stand-in on a free loopback port for the duration of the block."""
    running = marketplace_standin.serve(marketplace_standin.StandIn(APP_ID, app_secret))
    try:
        yield running
    finally:
        running.stop()


def client(running: marketplace_standin.Running, *, rate: float = 200.0,
           app_id: str = APP_ID, app_secret: str = APP_SECRET) -> marketplace.Client:
    return marketplace.Client(running.url, app_id, app_secret, rate=rate)
