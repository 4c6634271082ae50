"""Engine creation for SQLite (WAL, explicit BEGIN) and PostgreSQL (psycopg 3).

`write(engine)` opens a write transaction; on SQLite it is `BEGIN IMMEDIATE`, so a
read-then-write transaction never fails half-way on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from creditsync import errors

WRITE_OPTION = "creditsync_write"

DatabaseUnavailable = errors.DatabaseUnavailable


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached (as opposed to a bug or a constraint violation).

    The one predicate the API (503) and the operator (`Degraded/DatabaseUnavailable`) use.
    """
    if isinstance(exc, errors.DatabaseUnavailable | sa_exc.OperationalError
                  | sa_exc.InterfaceError | sa_exc.TimeoutError | psycopg.OperationalError
                  | psycopg.InterfaceError | psycopg_pool.PoolTimeout):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def create(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and explicit transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        # sessions in UTC: timestamps come back as `dt.UTC` datetimes (`models.UTCDateTime`)
        connect_args={"connect_timeout": 3, "options": "-c TimeZone=UTC"},
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


# `pg_advisory_xact_lock` key of one instance: every path that decides for an instance
# takes it first, so those decisions queue up even when no row exists yet to lock.
INSTANCE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


# two int4 keys: a key space of its own, apart from the instances' (and runners') int8 keys
CATALOG_LOCK_SQL = "SELECT pg_advisory_xact_lock(1667331169, 0)"  # 0x63617461 "cata"


def lock_catalog(conn: Connection) -> None:
    """Serialise this transaction with every other one that writes the catalog (a read,
    then a write of the whole catalog: two `CreditPlan`s changed at once must not lose one
    another's plan). SQLite: `BEGIN IMMEDIATE` already serialises writers."""
    if not is_sqlite(conn):
        conn.exec_driver_sql(CATALOG_LOCK_SQL)


def lock_instance(conn: Connection, instance_id: str) -> None:
    """Serialise this transaction with every other one deciding for `instance_id`.

    PostgreSQL: a transaction-scoped advisory lock on the instance id, taken before anything
    is read (statements after it see what the previous holder committed). SQLite: a write
    transaction is `BEGIN IMMEDIATE`, which already serialises every writer.
    """
    if is_sqlite(conn):
        return
    conn.exec_driver_sql(INSTANCE_LOCK_SQL, (instance_id,))


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A connection inside a write transaction, committed on success."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction whose statements all see one snapshot, however long it
    lasts (`REPEATABLE READ` on PostgreSQL; on SQLite every read transaction is one)."""
    with engine.connect() as connection:
        if not is_sqlite(connection):
            connection.execution_options(isolation_level="REPEATABLE READ",
                                         postgresql_readonly=True)
        with connection.begin():
            yield connection


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A connection inside a read transaction (on SQLite one snapshot; on PostgreSQL each
    statement sees what was committed when it started: `snapshot()` for one view)."""
    with engine.connect() as connection, connection.begin():
        yield connection


@contextmanager
def read_once(engine: Engine) -> Iterator[Connection]:
    """A connection for ONE read statement: on PostgreSQL in autocommit, so the read costs
    no BEGIN and COMMIT round trips (a hot path's lookup, e.g. a service key)."""
    with engine.connect() as connection:
        if is_sqlite(connection):
            yield connection
        else:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")


def describe(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)
