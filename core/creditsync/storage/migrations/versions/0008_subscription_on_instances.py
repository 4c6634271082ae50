"""Each instance carries a copy of its subscription's desired fields, so the drift test is a
comparison of the instance row's own columns (no join with `subscriptions`): `paid_plan_id`
(the subscription's plan, NULL when there is none or it is `removed`), `paid_until` (its
`expires_at`), `subscription_rev` (its `rev`) and `subscription_time` (its `source_time`).

Triggers keep the copy equal to the subscription in the transaction of every write, whoever
writes (ingress, a hand edit, a delete), and fill it in when an instance is inserted after its
subscription: on PostgreSQL statement-level triggers over transition tables (one set-based
UPDATE per statement, nothing written when the copy is already right); on SQLite row triggers.
The drift test's covering index goes: a scan now reads the heap in ranges of its blocks
(PostgreSQL) or `rowid`s (SQLite), which is faster than reading an index as wide as the
table, and every write of a plan or an allocation no longer rewrites it; the covering
index the join read on `subscriptions` goes too.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COPIED = ('paid_plan_id', 'paid_until', 'subscription_rev', 'subscription_time')
_OLD_DRIFT = ['instance_id', 'plan_id', 'credits_total', 'applied_rev', 'period_end']


def _values(s: str) -> tuple[str, ...]:
    """The copied values of subscription row `s`, in `_COPIED` order (all NULL when `s` is
    missing)."""
    return (f"CASE WHEN {s}.status <> 'removed' THEN {s}.plan_id END", f"{s}.expires_at",
            f"{s}.rev", f"{s}.source_time")


def _copy_of(s: str) -> str:
    return ", ".join(_values(s))


_TARGET = "(" + ", ".join(_COPIED) + ")"
# the copy is written only where it differs (a writer that set it already costs no update)
_DIFFERS = ("(" + ", ".join(f"i.{c}" for c in _COPIED) + ") IS DISTINCT FROM ("
            + _copy_of("s") + ")")

_PG_FUNCTIONS = f"""
CREATE FUNCTION creditsync_subscriptions_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE instances AS i SET {_TARGET} = ({_copy_of('s')})
    FROM changed_subscriptions c LEFT JOIN subscriptions s ON s.instance_id = c.instance_id
    WHERE i.instance_id = c.instance_id AND {_DIFFERS};
    RETURN NULL;
END $$;
CREATE FUNCTION creditsync_instances_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE instances AS i SET {_TARGET} = ({_copy_of('s')})
    FROM new_instances n JOIN subscriptions s ON s.instance_id = n.instance_id
    WHERE i.instance_id = n.instance_id AND {_DIFFERS};
    RETURN NULL;
END $$;
CREATE TRIGGER subscriptions_copy_inserted AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS changed_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION creditsync_subscriptions_copy();
CREATE TRIGGER subscriptions_copy_updated AFTER UPDATE ON subscriptions
    REFERENCING NEW TABLE AS changed_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION creditsync_subscriptions_copy();
CREATE TRIGGER subscriptions_copy_deleted AFTER DELETE ON subscriptions
    REFERENCING OLD TABLE AS changed_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION creditsync_subscriptions_copy();
CREATE TRIGGER instances_copy_inserted AFTER INSERT ON instances
    REFERENCING NEW TABLE AS new_instances
    FOR EACH STATEMENT EXECUTE FUNCTION creditsync_instances_copy()
"""
_PG_DROP = """
DROP TRIGGER IF EXISTS instances_copy_inserted ON instances;
DROP TRIGGER IF EXISTS subscriptions_copy_deleted ON subscriptions;
DROP TRIGGER IF EXISTS subscriptions_copy_updated ON subscriptions;
DROP TRIGGER IF EXISTS subscriptions_copy_inserted ON subscriptions;
DROP FUNCTION IF EXISTS creditsync_instances_copy();
DROP FUNCTION IF EXISTS creditsync_subscriptions_copy()
"""


def _sqlite_set(s: str) -> str:
    return ", ".join(f"{column} = {value}" for column, value in zip(
        _COPIED, _values(s), strict=True))


_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER subscriptions_copy_{event.lower()} AFTER {event} ON subscriptions
        BEGIN UPDATE instances SET {_sqlite_set('NEW')}
        WHERE instance_id = NEW.instance_id; END"""
    for event in ("INSERT", "UPDATE")
] + [
    f"""CREATE TRIGGER subscriptions_copy_delete AFTER DELETE ON subscriptions
        BEGIN UPDATE instances SET {", ".join(f"{c} = NULL" for c in _COPIED)}
        WHERE instance_id = OLD.instance_id; END""",
    f"""CREATE TRIGGER instances_copy_insert AFTER INSERT ON instances
        WHEN EXISTS (SELECT 1 FROM subscriptions WHERE instance_id = NEW.instance_id)
        BEGIN UPDATE instances SET {_TARGET} = (SELECT {_copy_of('s')} FROM subscriptions s
                                                WHERE s.instance_id = NEW.instance_id)
        WHERE instance_id = NEW.instance_id; END""",
]
_SQLITE_DROP = [f"DROP TRIGGER IF EXISTS {name}" for name in (
    "subscriptions_copy_insert", "subscriptions_copy_update", "subscriptions_copy_delete",
    "instances_copy_insert")]


def upgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('paid_plan_id', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('paid_until', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('subscription_rev', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('subscription_time', sa.DateTime(timezone=True),
                                   nullable=True))
    sqlite = op.get_bind().dialect.name == 'sqlite'
    op.execute(f"""
        UPDATE instances SET {_TARGET} = (SELECT {_copy_of('s')} FROM subscriptions s
                                         WHERE s.instance_id = instances.instance_id)
        WHERE EXISTS (SELECT 1 FROM subscriptions s
                      WHERE s.instance_id = instances.instance_id)""")
    op.drop_index('ix_instances_drift', table_name='instances')
    op.drop_index('ix_subscriptions_desired', table_name='subscriptions')
    if sqlite:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    else:
        op.execute(_PG_FUNCTIONS)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for statement in _SQLITE_DROP:
            op.execute(statement)
    else:
        op.execute(_PG_DROP)
    op.create_index('ix_subscriptions_desired', 'subscriptions',
                    ['instance_id', 'plan_id', 'status', 'expires_at', 'rev'], unique=False)
    op.create_index('ix_instances_drift', 'instances', _OLD_DRIFT, unique=False)
    with op.batch_alter_table('instances') as batch:
        for column in reversed(_COPIED):
            batch.drop_column(column)
