"""SQLAlchemy 2 typed models: the tables every creditsync process shares.

Schema changes go through Alembic migrations (`storage/migrations`), never `create_all`.
Timestamps are timezone-aware UTC everywhere, SQLite included (`UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_ZERO = dt.timedelta(0)


def sqlite_time(moment: dt.datetime) -> str:
    """How a moment is stored on SQLite: naive UTC ISO text with microseconds.

    The same text SQLAlchemy's SQLite DATETIME writes, so it sorts and compares in SQL.
    """
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores UTC; always returns aware UTC datetimes (SQLite keeps no zone of its own).

    On SQLite the text is converted here with `fromisoformat` (C) rather than by the
    dialect's regular-expression parser: convergence reads hundreds of thousands of them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: creditsync stores aware UTC only")
        return sqlite_time(value) if dialect.name == "sqlite" else value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        assert isinstance(value, dt.datetime)
        return _as_utc(value)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """On PostgreSQL a plain function: the sessions are in UTC (`database.create`), so
        psycopg already returns `dt.UTC` datetimes, and convergence reads millions."""
        if dialect.name == "postgresql":
            return _pg_result
        return super().result_processor(dialect, coltype)


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is dt.UTC:
        return value
    if value.tzinfo is None or value.utcoffset() == _ZERO:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _pg_result(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo is dt.UTC else _as_utc(value)


# BIGINT identity on PostgreSQL; SQLite's INTEGER PRIMARY KEY is its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime()}


class PlanRow(Base):
    """The catalog every convergence reads."""

    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    monthly_credits: Mapped[int] = mapped_column(BigInteger)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    display_name: Mapped[str | None] = mapped_column(String(200))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # `rollover: {maxCredits, expiresAfter}`: both set, or neither (no rollover)
    rollover_max_credits: Mapped[int | None] = mapped_column(BigInteger)
    rollover_expires_after_s: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime]


class PolicyRow(Base):
    """The transition policy every process converges with (one row), and where it came from."""

    __tablename__ = "policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    usage_on_plan_change: Mapped[str] = mapped_column(String(16))
    expiry_grace_seconds: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(300))
    updated_at: Mapped[dt.datetime]
    # `credits.low` thresholds as `thresholds.format` writes them (None: the defaults)
    low_credit_thresholds: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)


class Subscription(Base):
    """Desired state, one row per instance, written only by ingress."""

    __tablename__ = "subscriptions"

    instance_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # active | cancelled | removed
    expires_at: Mapped[dt.datetime | None]
    rev: Mapped[int] = mapped_column(Integer, default=0)
    source_time: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]

    __table_args__ = (
        # the tick's candidate sets: expiries crossed since the last cutoff, plans changed
        Index("ix_subscriptions_expires_at", "expires_at"),
        Index("ix_subscriptions_plan_id", "plan_id"),
    )


class Instance(Base):
    """Actual state of one app instance's credits."""

    __tablename__ = "instances"

    instance_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(100))
    credits_total: Mapped[int] = mapped_column(BigInteger)
    bonus_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    # the sum of the instance's `held` reservations, kept in the same transaction as they
    # change; not part of its numbers (a hold is no balance change and writes no ledger row)
    credits_held: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    credits_used_month: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[dt.datetime]
    period_end: Mapped[dt.datetime]
    applied_rev: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    last_synced_at: Mapped[dt.datetime | None]
    # the last Sync Credits call: a guarded update of it is the per-instance rate limit
    last_manual_sync_at: Mapped[dt.datetime | None]
    # when the marketplace was last asked about it (None: never, first in the audit's line)
    last_audited_at: Mapped[dt.datetime | None]
    last_audit_error: Mapped[str | None] = mapped_column(Text)  # the marketplace's, if any
    # the `credits.low` thresholds (basis points, comma-separated) already sent in the
    # period that started at `low_credits_period`: written with the spend that sends one
    low_credits_sent: Mapped[str | None] = mapped_column(String(200))
    low_credits_period: Mapped[dt.datetime | None]
    # a copy of the subscription's desired fields, kept equal to it by triggers in the
    # transaction of every write of either table (migration 0008), so the drift test reads
    # the instance row alone: its plan (NULL: none, or `removed`), `expires_at`, `rev` and
    # `source_time`
    paid_plan_id: Mapped[str | None] = mapped_column(String(100))
    paid_until: Mapped[dt.datetime | None]
    subscription_rev: Mapped[int | None]
    subscription_time: Mapped[dt.datetime | None]

    __table_args__ = (
        Index("ix_instances_period_end", "period_end"),
        Index("ix_instances_plan_id", "plan_id"),
        Index("ix_instances_last_audited_at", "last_audited_at", "instance_id"),
    )


class LedgerEntry(Base):
    """Append-only credit history: one row per change to an instance's numbers."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(100))
    at: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(20))
    correlation_id: Mapped[str | None] = mapped_column(String(100))
    plan_before: Mapped[str | None] = mapped_column(String(100))
    plan_after: Mapped[str] = mapped_column(String(100))
    credits_total_before: Mapped[int] = mapped_column(BigInteger)
    credits_total_after: Mapped[int] = mapped_column(BigInteger)
    credits_used_before: Mapped[int] = mapped_column(BigInteger)
    credits_used_after: Mapped[int] = mapped_column(BigInteger)
    bonus_before: Mapped[int] = mapped_column(BigInteger)
    bonus_after: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    # the one grant this row changed (its remaining moved by bonus_after - bonus_before);
    # None for a row that drew several (see `ledger_grant_draws`) or none
    grant_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        Index("ix_ledger_instance_id_id", "instance_id", "id"),
        Index("ix_ledger_at", "at"),
    )


class Grant(Base):
    """Credits granted to an instance beside its plan: spent after the plan credits, by
    `priority` (lower first), then soonest `expires_at` (none last), then oldest.

    `instances.bonus_credits` is the sum of `remaining` over the instance's live grants,
    kept so in the same transaction as every change here.
    """

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # grt_ + random
    instance_id: Mapped[str] = mapped_column(String(100))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    expires_at: Mapped[dt.datetime | None]
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # enums.GrantSource
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # enums.GrantStatus
    created_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("instance_id", "idempotency_key",
                         name="uq_grants_instance_id_idempotency_key"),
        CheckConstraint("priority >= 0 AND priority <= 100", name="priority_range"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_range"),
        # spending: an instance's live grants
        Index("ix_grants_instance_id_status", "instance_id", "status"),
        # the loop's due expiries: live grants only (partial on both databases)
        Index("ix_grants_live_expires_at", "expires_at",
              postgresql_where=text("status = 'live' AND expires_at IS NOT NULL"),
              sqlite_where=text("status = 'live' AND expires_at IS NOT NULL")),
    )


class LedgerGrantDraw(Base):
    """How much one ledger row drew from each grant, when it drew from several."""

    __tablename__ = "ledger_grant_draws"

    ledger_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_ledger_grant_draws_grant_id", "grant_id"),)


class WebhookEvent(Base):
    """The inbox: every verified webhook, stored before it is acknowledged."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    instance_id: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str | None] = mapped_column(String(200))
    operation_time: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None]  # `expiresOn`, validated at the door
    received_at: Mapped[dt.datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None]
    applied_at: Mapped[dt.datetime | None]

    __table_args__ = (
        Index("ix_webhook_events_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_events_instance_id", "instance_id"),
    )


class SyncRun(Base):
    """One convergence run and what it found."""

    __tablename__ = "sync_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    trigger: Mapped[str] = mapped_column(String(20))
    scope: Mapped[str] = mapped_column(String(16), default="all")  # all | instances
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    scanned: Mapped[int] = mapped_column(Integer, default=0)
    drifted: Mapped[int] = mapped_column(Integer, default=0)
    repaired: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # a full scan after a tick: the instances it changed that no tick had been told about
    missed: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_sync_runs_started_at", "started_at"),)


class ConvergeQueue(Base):
    """Instances a path changed without converging them at once: the next tick does.

    Written in the same transaction as the change; an instance may be queued twice (the
    tick reads distinct ids and deletes exactly the rows it read)."""

    __tablename__ = "converge_queue"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(100))
    queued_at: Mapped[dt.datetime]


class CatalogChangeRow(Base):
    """Plans the catalog added, changed or removed since the last tick (written with the
    change): the tick converges the instances on them and those whose subscription names
    them."""

    __tablename__ = "catalog_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[dt.datetime]


class TickMark(Base):
    """Where the ticks are (one row): the expiry cutoff (`now - grace`) the last tick or
    full scan converged up to, so the next reads only the expiries crossed since."""

    __tablename__ = "tick_marks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    expiry_cutoff: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime]

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)


class UsageRequest(Base):
    """Idempotency record of one successful consume: a replayed key returns it."""

    __tablename__ = "usage_requests"

    instance_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    from_plan: Mapped[int] = mapped_column(BigInteger)
    from_bonus: Mapped[int] = mapped_column(BigInteger)
    remaining_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime]


class ServiceKey(Base):
    """A key an app's backend sends as `Authorization: Bearer csk_<id>_<secret>`; only the
    SHA-256 of the secret is stored."""

    __tablename__ = "service_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class Reservation(Base):
    """Credits held for a job until it is committed (charged), released or expired."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # rsv_<random>
    instance_id: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    committed_amount: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # enums.ReservationStatus
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    settled_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("instance_id", "idempotency_key",
                         name="uq_reservations_instance_id_idempotency_key"),
        # the loop finds the expired holds through this, without a scan
        Index("ix_reservations_status_expires_at", "status", "expires_at"),
    )


class OutboxEvent(Base):
    """An event to the app (Standard Webhooks), written in the transaction of its change.

    `seq` orders an instance's events; `id` is the `webhook-id`, the same on every retry.
    """

    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    instance_id: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None]

    __table_args__ = (
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_instance_id_seq", "instance_id", "seq"),
    )


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# policy.Numbers field -> instances column, for the fields convergence may change (all
# but the bonus, which it never touches)
NUMBER_COLUMNS = {"plan_id": "plan_id", "credits_total": "credits_total",
                  "credits_used": "credits_used_month", "period_start": "period_start",
                  "period_end": "period_end", "applied_rev": "applied_rev"}

# Core (not ORM) handles on the tables, for the set-based hot paths.
PLANS = _table(PlanRow)
POLICY = _table(PolicyRow)
SUBSCRIPTIONS = _table(Subscription)
INSTANCES = _table(Instance)
LEDGER = _table(LedgerEntry)
WEBHOOK_EVENTS = _table(WebhookEvent)
SYNC_RUNS = _table(SyncRun)
USAGE_REQUESTS = _table(UsageRequest)
SERVICE_KEYS = _table(ServiceKey)
RESERVATIONS = _table(Reservation)
OUTBOX = _table(OutboxEvent)
GRANTS = _table(Grant)
LEDGER_GRANT_DRAWS = _table(LedgerGrantDraw)
CONVERGE_QUEUE = _table(ConvergeQueue)
CATALOG_CHANGES = _table(CatalogChangeRow)
TICK_MARKS = _table(TickMark)
