"""Initial schema: plans, subscriptions, instances, ledger, inbox, sync runs, usage keys.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('instances',
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('plan_id', sa.String(length=100), nullable=False),
    sa.Column('credits_total', sa.BigInteger(), nullable=False),
    sa.Column('bonus_credits', sa.BigInteger(), nullable=False),
    sa.Column('credits_used_month', sa.BigInteger(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_rev', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('instance_id', name=op.f('pk_instances'))
    )
    op.create_index('ix_instances_period_end', 'instances', ['period_end'], unique=False)
    op.create_index('ix_instances_plan_id', 'instances', ['plan_id'], unique=False)
    op.create_index('ix_instances_drift', 'instances', ['instance_id', 'plan_id', 'credits_total', 'applied_rev', 'period_end'], unique=False)

    op.create_table('ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('actor', sa.String(length=20), nullable=False),
    sa.Column('correlation_id', sa.String(length=100), nullable=True),
    sa.Column('plan_before', sa.String(length=100), nullable=True),
    sa.Column('plan_after', sa.String(length=100), nullable=False),
    sa.Column('credits_total_before', sa.BigInteger(), nullable=False),
    sa.Column('credits_total_after', sa.BigInteger(), nullable=False),
    sa.Column('credits_used_before', sa.BigInteger(), nullable=False),
    sa.Column('credits_used_after', sa.BigInteger(), nullable=False),
    sa.Column('bonus_before', sa.BigInteger(), nullable=False),
    sa.Column('bonus_after', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger'))
    )
    op.create_index('ix_ledger_at', 'ledger', ['at'], unique=False)
    op.create_index('ix_ledger_instance_id_id', 'ledger', ['instance_id', 'id'], unique=False)

    op.create_table('plans',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('monthly_credits', sa.BigInteger(), nullable=False),
    sa.Column('aliases', sa.JSON(), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=True),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plans'))
    )
    op.create_table('subscriptions',
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('plan_id', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rev', sa.Integer(), nullable=False),
    sa.Column('source_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('instance_id', name=op.f('pk_subscriptions'))
    )
    op.create_index('ix_subscriptions_desired', 'subscriptions', ['instance_id', 'plan_id', 'status', 'expires_at', 'rev'], unique=False)
    op.create_table('sync_runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('trigger', sa.String(length=20), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('scanned', sa.Integer(), nullable=False),
    sa.Column('drifted', sa.Integer(), nullable=False),
    sa.Column('repaired', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    op.create_index('ix_sync_runs_started_at', 'sync_runs', ['started_at'], unique=False)

    op.create_table('usage_requests',
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('from_plan', sa.BigInteger(), nullable=False),
    sa.Column('from_bonus', sa.BigInteger(), nullable=False),
    sa.Column('remaining_after', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('instance_id', 'idempotency_key', name=op.f('pk_usage_requests'))
    )
    op.create_table('webhook_events',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('dedupe_key', sa.String(length=64), nullable=False),
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.String(length=200), nullable=True),
    sa.Column('operation_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_webhook_events_dedupe_key'))
    )
    op.create_index('ix_webhook_events_instance_id', 'webhook_events', ['instance_id'], unique=False)
    op.create_index('ix_webhook_events_status_next_attempt_at', 'webhook_events', ['status', 'next_attempt_at'], unique=False)



def downgrade() -> None:
    op.drop_index('ix_webhook_events_status_next_attempt_at', table_name='webhook_events')
    op.drop_index('ix_webhook_events_instance_id', table_name='webhook_events')

    op.drop_table('webhook_events')
    op.drop_table('usage_requests')
    op.drop_index('ix_sync_runs_started_at', table_name='sync_runs')

    op.drop_table('sync_runs')
    op.drop_index('ix_subscriptions_desired', table_name='subscriptions')
    op.drop_table('subscriptions')
    op.drop_table('plans')
    op.drop_index('ix_ledger_instance_id_id', table_name='ledger')
    op.drop_index('ix_ledger_at', table_name='ledger')

    op.drop_table('ledger')
    op.drop_index('ix_instances_drift', table_name='instances')
    op.drop_index('ix_instances_plan_id', table_name='instances')
    op.drop_index('ix_instances_period_end', table_name='instances')

    op.drop_table('instances')
