"""Shared fixtures: every storage/engine test runs on SQLite and on real PostgreSQL.

`db_url` is parametrized over both; each test gets a fresh database at the schema's head
with the built-in catalog seeded (PostgreSQL databases are cloned from a template). The
helpers behind them are in `tests.support.database`; this file holds fixtures and hooks only.
Under pytest-xdist each worker has its own PostgreSQL cluster (a session fixture, a free port).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from creditsync.storage import database
from tests.support import database as database_helpers
from tests.support import scheduling
from tests.support.postgres import PostgresCluster


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `pytest -n N`: whole-system modules stay whole (`tests.support.scheduling`)."""
    return scheduling.WholeModules(config, log)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    """This process's (this worker's) PostgreSQL cluster, with the template database."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        database_helpers.create_template(cluster)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_helpers.fresh_database(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all (for tests of the migrations), on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    cluster: PostgresCluster = request.getfixturevalue("pg")
    return cluster.url(database_helpers.new_pg_database(cluster, template=None))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = database.create(db_url)
    try:
        yield eng
    finally:
        eng.dispose()
