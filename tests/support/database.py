"""Test databases: SQLite files and PostgreSQL databases at the schema's head with the
built-in catalog seeded. PostgreSQL databases are cloned from `TEMPLATE`, which the
session's `pg` fixture (tests/conftest.py) prepares once per cluster (one per worker);
SQLite databases are copies of a file prepared once per process (running the migrations
for each test cost ~0.2 s of CPU a test)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from creditsync import catalog
from creditsync.storage import database, models, schema
from tests.support.postgres import PostgresCluster
from tests.support.times import T0

TEMPLATE = "creditsync_template"
_names = itertools.count(1)


def prepare(url: str) -> None:
    """Upgrade the schema and seed the built-in catalog."""
    engine = database.create(url)
    try:
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, T0)
    finally:
        engine.dispose()


@functools.cache
def _sqlite_template() -> Path:
    root = Path(tempfile.mkdtemp(prefix="creditsync-sqlite-template-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    path = root / "template.db"
    prepare(f"sqlite:///{path}")  # its engine disposed: no WAL left beside the file
    return path


def new_sqlite_database(path: Path) -> str:
    """A SQLite database at `path` (a copy of the prepared template); returns its URL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template(), path)
    return f"sqlite:///{path}"


def _admin(cluster: PostgresCluster, *statements: str) -> None:
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        admin.dispose()


def create_template(cluster: PostgresCluster) -> None:
    """`TEMPLATE` in `cluster`: the schema at head, the built-in catalog."""
    _admin(cluster, f"CREATE DATABASE {TEMPLATE}")
    prepare(cluster.url(TEMPLATE))


def new_pg_database(cluster: PostgresCluster, name: str | None = None, *,
                    template: str | None = TEMPLATE) -> str:
    """A new database (a unique name unless given; an existing one of that name is
    replaced), cloned from `template` (None: empty); returns its name."""
    name = name or f"test_{next(_names)}"
    _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
           f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return name


def drop_pg_database(cluster: PostgresCluster, name: str) -> None:
    _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A new database at the schema's head with the built-in catalog: `sqlite` or `postgres`."""
    if backend == "sqlite":
        yield new_sqlite_database(tmp_path / "creditsync.db")
        return
    cluster: PostgresCluster = request.getfixturevalue("pg")
    name = new_pg_database(cluster)
    try:
        yield cluster.url(name)
    finally:
        drop_pg_database(cluster, name)


INSTANCE_COLUMNS_0003 = ["instance_id", "plan_id", "credits_total", "bonus_credits",
                         "credits_used_month", "period_start", "period_end", "applied_rev",
                         "version", "created_at", "updated_at"]


def instances_as_of_0003() -> sa.TableClause:
    """The instances table as migration 0003 left it (for tests of later migrations: the
    model's table has columns the old schema lacks)."""
    return sa.table("instances", *(
        sa.column(c, models.UTCDateTime()) if c.endswith(("_start", "_end", "_at"))
        else sa.column(c) for c in INSTANCE_COLUMNS_0003))
