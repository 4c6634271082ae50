"""Alembic environment: runs on the connection `creditsync.storage.schema` hands over."""

from alembic import context
from sqlalchemy.engine import Connection

from creditsync.storage import models

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through `creditsync db upgrade`, not the alembic CLI")
context.configure(
    connection=connection,
    target_metadata=models.Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
