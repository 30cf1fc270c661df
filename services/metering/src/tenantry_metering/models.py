"""Metering's tables: the ledger, its aggregates, budget alerts (an outbox) and offboarded tenants.

``tenant_id`` leads every primary and unique key, so every lookup is scoped by tenant at the
storage level (and ``repository.py`` puts it in every WHERE clause).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

metadata = MetaData()

#: One row per UsageRecorded, written once (the event id is the idempotency key).
usage_ledger = Table(
    "usage_ledger",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("model", String(200), nullable=False),
    Column("user_id", String(200), nullable=False),
    # The end user the request named (OpenAI's ``user``), if it named one.
    Column("end_user", String(256), nullable=True),
    Column("source", String(100), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached", Boolean, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    # False when the model is not in the catalogue: recorded at cost 0 and flagged.
    Column("priced", Boolean, nullable=False),
    # SHA-256 of the canonical event JSON: a redelivery matches it, a conflicting event not.
    Column("payload_sha256", LargeBinary(32), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("tenant_id", "event_id", name="pk_usage_ledger"),
    # Usage per end user (``repository.end_user_rows``) from the index alone; only rows that
    # name an end user are in it, so usage without one costs nothing measurable more to record
    # (bench/README, "Metering").
    Index(
        "ix_usage_ledger_end_user",
        "tenant_id",
        "day",
        postgresql_where=text("end_user IS NOT NULL"),
        postgresql_include=["end_user", "prompt_tokens", "completion_tokens", "cost_micros"],
    ),
)

_AGGREGATE_COLUMNS = (
    ("requests", BigInteger),
    ("cached_requests", BigInteger),
    ("prompt_tokens", BigInteger),
    ("completion_tokens", BigInteger),
    ("cost_micros", BigInteger),
    ("unpriced_requests", BigInteger),
)


def _aggregate_columns() -> list[Column[int]]:
    return [
        Column(name, kind, nullable=False, server_default="0") for name, kind in _AGGREGATE_COLUMNS
    ]


#: Per tenant, UTC day and model; updated in the ledger insert's transaction.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("model", String(200), nullable=False),
    *_aggregate_columns(),
    PrimaryKeyConstraint("tenant_id", "day", "model", name="pk_usage_daily"),
)

#: Per tenant, UTC month (its first day) and model; same transaction.
usage_monthly = Table(
    "usage_monthly",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("month", Date, nullable=False),
    Column("model", String(200), nullable=False),
    *_aggregate_columns(),
    PrimaryKeyConstraint("tenant_id", "month", "model", name="pk_usage_monthly"),
)

#: A budget alert, once per tenant, kind, period and threshold; ``published_at`` makes it an
#: outbox (written in the ledger transaction, published after, retried until published).
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("period", String(10), nullable=False),
    Column("threshold_percent", Integer, nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("budget_limit", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint(
        "tenant_id", "kind", "period", "threshold_percent", name="pk_budget_alerts"
    ),
)

#: Tenants offboarded: their ledger is kept (billing records), their budgets no longer watched.
offboarded_tenants = Table(
    "offboarded_tenants",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("offboarded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", name="pk_offboarded_tenants"),
)
