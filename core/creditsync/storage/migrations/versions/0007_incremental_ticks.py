"""Incremental ticks: the queue of instances changed without converging, the catalog
changes since the last tick, the tick's expiry cutoff, the indexes the candidate sets read,
and what a full scan found that the ticks missed.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('converge_queue',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_converge_queue'))
    )
    op.create_table('catalog_changes',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('plan_id', sa.String(length=100), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_changes'))
    )
    op.create_table('tick_marks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('expiry_cutoff', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_tick_marks_one_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tick_marks'))
    )
    op.create_index('ix_subscriptions_expires_at', 'subscriptions', ['expires_at'],
                    unique=False)
    op.create_index('ix_subscriptions_plan_id', 'subscriptions', ['plan_id'], unique=False)
    with op.batch_alter_table('sync_runs') as batch:
        batch.add_column(sa.Column('missed', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_runs') as batch:
        batch.drop_column('missed')
    op.drop_index('ix_subscriptions_plan_id', table_name='subscriptions')
    op.drop_index('ix_subscriptions_expires_at', table_name='subscriptions')
    op.drop_table('tick_marks')
    op.drop_table('catalog_changes')
    op.drop_table('converge_queue')
