"""The runners' locks: no two runners (operator or standalone) converge, audit or deliver
the outbox at once.

PostgreSQL: a session advisory lock held on a dedicated connection. SQLite: an exclusive
`flock` on a file beside the database. Both are non-blocking: a runner that does not get
the lock skips its turn.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ADVISORY_KEY = 0x63726564  # "cred"
AUDIT_KEY = 0x61756474  # "audt": the marketplace audit's own runner lock
DELIVERY_KEY = 0x64656c76  # "delv": the outbox's deliverer


@contextmanager
def convergence_lock(engine: Engine) -> Iterator[bool]:
    """Yield True while this process holds the lock, False if another runner has it."""
    with _runner_lock(engine, ADVISORY_KEY, ".converge.lock") as held:
        yield held


@contextmanager
def audit_lock(engine: Engine) -> Iterator[bool]:
    """The same, for the marketplace audit: one active auditor, which never holds up a
    convergence (an audit batch waits on the marketplace's request rate)."""
    with _runner_lock(engine, AUDIT_KEY, ".audit.lock") as held:
        yield held


@contextmanager
def delivery_lock(engine: Engine) -> Iterator[bool]:
    """The same, for delivering the outbox: one deliverer at a time, so an instance's events
    go out in order and none twice at once (a held lock is a quiet skip)."""
    with _runner_lock(engine, DELIVERY_KEY, ".deliver.lock") as held:
        yield held


@contextmanager
def _runner_lock(engine: Engine, key: int, suffix: str) -> Iterator[bool]:
    if engine.dialect.name == "sqlite":
        with _file_lock(engine, suffix) as held:
            yield held
        return
    with engine.connect() as conn:
        held = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                                 {"k": key}).scalar_one())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


@contextmanager
def _file_lock(engine: Engine, suffix: str) -> Iterator[bool]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield True
        return
    path = Path(database).expanduser().resolve().with_suffix(suffix)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
