"""Shared fixtures: every storage/engine test runs on SQLite and on real PostgreSQL.

`db_url` is parametrized over both; each test gets a fresh database at the schema's head
with the built-in catalog seeded (PostgreSQL databases are cloned from a template).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import catalog
from creditsync.storage import database, schema
from tests.support import scheduling
from tests.support.postgres import PostgresCluster

TEMPLATE = "creditsync_template"
_names = itertools.count(1)
T0 = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


def prepare(url: str) -> None:
    """Upgrade the schema and seed the built-in catalog."""
    engine = database.create(url)
    try:
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, T0)
    finally:
        engine.dispose()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `pytest -n N`: whole-system modules stay whole (`tests.support.scheduling`)."""
    return scheduling.WholeModules(config, log)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE}")
    admin.dispose()
    prepare(cluster.url(TEMPLATE))
    try:
        yield cluster
    finally:
        cluster.destroy()


def _new_pg_database(cluster: PostgresCluster) -> str:
    name = f"test_{next(_names)}"
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    admin.dispose()
    return name


def _drop_pg_database(cluster: PostgresCluster, name: str) -> None:
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@contextlib.contextmanager
def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A new database at the schema's head with the built-in catalog: `sqlite` or `postgres`."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/creditsync.db"
        prepare(url)
        yield url
        return
    cluster: PostgresCluster = request.getfixturevalue("pg")
    name = _new_pg_database(cluster)
    try:
        yield cluster.url(name)
    finally:
        _drop_pg_database(cluster, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = database.create(db_url)
    try:
        yield eng
    finally:
        eng.dispose()
