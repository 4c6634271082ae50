"""Grants (credits beside the plan, with a priority and an optional expiry), the ledger's
link to them, and the catalog's rollover rule. Each instance's bonus credits become one
grant without expiry (source `migration`), so `bonus_credits` keeps its meaning: what is
left on live grants.

Revision ID: 0006
Revises: 0005
"""

import datetime as dt
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE_DUE = "status = 'live' AND expires_at IS NOT NULL"
_BATCH = 5000


def upgrade() -> None:
    op.create_table('grants',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('instance_id', sa.String(length=100), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('priority >= 0 AND priority <= 100',
                       name=op.f('ck_grants_priority_range')),
    sa.CheckConstraint('remaining >= 0 AND remaining <= amount',
                       name=op.f('ck_grants_remaining_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grants')),
    sa.UniqueConstraint('instance_id', 'idempotency_key',
                        name='uq_grants_instance_id_idempotency_key'),
    )
    op.create_index('ix_grants_instance_id_status', 'grants', ['instance_id', 'status'])
    op.create_index('ix_grants_live_expires_at', 'grants', ['expires_at'],
                    postgresql_where=sa.text(_LIVE_DUE), sqlite_where=sa.text(_LIVE_DUE))
    op.create_table('ledger_grant_draws',
    sa.Column('ledger_id', sa.BigInteger(), nullable=False),
    sa.Column('grant_id', sa.String(length=40), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('ledger_id', 'grant_id', name=op.f('pk_ledger_grant_draws')),
    )
    op.create_index('ix_ledger_grant_draws_grant_id', 'ledger_grant_draws', ['grant_id'])
    with op.batch_alter_table('ledger') as batch:
        batch.add_column(sa.Column('grant_id', sa.String(length=40), nullable=True))
    with op.batch_alter_table('plans') as batch:
        batch.add_column(sa.Column('rollover_max_credits', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('rollover_expires_after_s', sa.BigInteger(),
                                   nullable=True))
    _bonus_to_grants()


def _bonus_to_grants() -> None:
    """One grant without expiry per instance holding bonus credits (ids made here: they
    must be unguessable, which no SQL both databases share can promise)."""
    instances = sa.table('instances', sa.column('instance_id', sa.String()),
                         sa.column('bonus_credits', sa.BigInteger()))
    grants = sa.table('grants', *(sa.column(name) for name in (
        'id', 'instance_id', 'amount', 'remaining', 'priority', 'expires_at', 'reason',
        'source', 'idempotency_key', 'status', 'created_at', 'ended_at')))
    conn = op.get_bind()
    now = dt.datetime.now(dt.UTC)
    stamp = (now.replace(tzinfo=None).isoformat(' ', 'microseconds')
             if conn.dialect.name == 'sqlite' else now)
    rows = conn.execute(sa.select(instances.c.instance_id, instances.c.bonus_credits)
                        .where(instances.c.bonus_credits != 0)
                        .order_by(instances.c.instance_id)).all()
    for start in range(0, len(rows), _BATCH):
        conn.execute(grants.insert(), [
            {'id': f'grt_{secrets.token_urlsafe(16)}', 'instance_id': instance_id,
             'amount': bonus, 'remaining': bonus, 'priority': 50, 'expires_at': None,
             'reason': 'bonus credits before grants existed', 'source': 'migration',
             'idempotency_key': 'migration:bonus', 'status': 'live', 'created_at': stamp,
             'ended_at': None}
            for instance_id, bonus in rows[start:start + _BATCH]])


def downgrade() -> None:
    with op.batch_alter_table('plans') as batch:
        batch.drop_column('rollover_expires_after_s')
        batch.drop_column('rollover_max_credits')
    with op.batch_alter_table('ledger') as batch:
        batch.drop_column('grant_id')
    op.drop_index('ix_ledger_grant_draws_grant_id', table_name='ledger_grant_draws')
    op.drop_table('ledger_grant_draws')
    op.drop_index('ix_grants_live_expires_at', table_name='grants')
    op.drop_index('ix_grants_instance_id_status', table_name='grants')
    op.drop_table('grants')
