"""The stored transition policy (one row), each instance's last manual sync time, and an
inbox event's validated expiry.

Revision ID: 0002
Revises: 0001
"""

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('usage_on_plan_change', sa.String(length=16), nullable=False),
    sa.Column('expiry_grace_seconds', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_policy_one_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy'))
    )
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('last_manual_sync_at', sa.DateTime(timezone=True),
                                   nullable=True))
    with op.batch_alter_table('webhook_events') as batch:
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    _backfill_expiry()


def _backfill_expiry() -> None:
    """Events still to be applied keep the expiry their payload carries."""
    events = sa.table('webhook_events', sa.column('id', sa.String()),
                      sa.column('payload', sa.JSON()), sa.column('status', sa.String()),
                      sa.column('expires_at', sa.DateTime(timezone=True)))
    conn = op.get_bind()
    rows = conn.execute(sa.select(events.c.id, events.c.payload).where(
        events.c.status.in_(('pending', 'quarantined', 'failed', 'ignored')))).all()
    for event_id, payload in rows:
        text = (payload or {}).get('expiresOn') if isinstance(payload, dict) else None
        try:
            moment = dt.datetime.fromisoformat(text) if isinstance(text, str) and text else None
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            utc = moment.astimezone(dt.UTC)
            value = (utc.replace(tzinfo=None).isoformat(' ', 'microseconds')
                     if conn.dialect.name == 'sqlite' else utc)
            conn.execute(events.update().where(events.c.id == event_id)
                         .values(expires_at=value))


def downgrade() -> None:
    with op.batch_alter_table('webhook_events') as batch:
        batch.drop_column('expires_at')
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('last_manual_sync_at')
    op.drop_table('policy')
