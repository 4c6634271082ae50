"""Events to the app: the outbox table, each instance's `credits.low` state, and the stored
`credits.low` thresholds.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
              nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_outbox')),
    sa.UniqueConstraint('id', name=op.f('uq_outbox_id'))
    )
    op.create_index('ix_outbox_status_next_attempt_at', 'outbox', ['status', 'next_attempt_at'],
                    unique=False)
    op.create_index('ix_outbox_instance_id_seq', 'outbox', ['instance_id', 'seq'], unique=False)
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('low_credits_sent', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('low_credits_period', sa.DateTime(timezone=True),
                                   nullable=True))
    with op.batch_alter_table('policy') as batch:
        batch.add_column(sa.Column('low_credit_thresholds', sa.String(length=200),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('policy') as batch:
        batch.drop_column('low_credit_thresholds')
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('low_credits_period')
        batch.drop_column('low_credits_sent')
    op.drop_index('ix_outbox_instance_id_seq', table_name='outbox')
    op.drop_index('ix_outbox_status_next_attempt_at', table_name='outbox')
    op.drop_table('outbox')
