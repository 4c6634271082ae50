"""Fixtures of the operator's unit tests: a thread pool for blocking work, the Events posted."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import kopf
import pytest

from creditsync import clock
from tests.support.times import T0


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """The Events handlers post (kopf's poster only runs inside the operator); the clock
    stands at T0."""
    found: list[tuple[str, str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda body, *, type, reason, message: found.append(
        (type, reason, message)))
    monkeypatch.setattr(clock, "utcnow", lambda: T0)
    return found
