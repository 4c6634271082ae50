"""When the marketplace was last asked about each instance (the audit's order), and why it
could not answer, if it could not.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('last_audited_at', sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column('last_audit_error', sa.Text(), nullable=True))
    op.create_index('ix_instances_last_audited_at', 'instances',
                    ['last_audited_at', 'instance_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_instances_last_audited_at', table_name='instances')
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('last_audit_error')
        batch.drop_column('last_audited_at')
