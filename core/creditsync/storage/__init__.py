"""Storage: the SQLAlchemy models, engine creation, and the Alembic-managed schema."""
