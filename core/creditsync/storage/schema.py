"""The schema's version: upgrade with Alembic, and refuse to run on an outdated one."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from creditsync import errors

MIGRATIONS = Path(__file__).parent / "migrations"


SchemaOutdated = errors.SchemaOutdated


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def require_current(engine: Engine) -> None:
    """Raise `SchemaOutdated` with what to do when the schema is not at head."""
    found, needed = current(engine), head()
    if found != needed:
        raise SchemaOutdated(
            f"the database schema is at {found or 'nothing (empty database)'}, this version "
            f"needs {needed}: run `creditsync db upgrade` against the same "
            "CREDITSYNC_DATABASE_URL first"
        )
