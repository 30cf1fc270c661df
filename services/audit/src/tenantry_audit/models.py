"""Audit's tables. The schema itself (roles, grants, the retention function) is in migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)

metadata = MetaData()

#: The append-only log: one row per AuditRecorded, one chain per tenant.
records = Table(
    "audit_records",
    metadata,
    Column("tenant_id", Uuid, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("audit_type", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("actor", Text),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("ip_address", Text),
    Column("user_agent", Text),
    # Canonical JSON text, not jsonb: the hash covers these exact bytes.
    Column("details_json", Text, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    PrimaryKeyConstraint("tenant_id", "sequence", name="audit_records_pkey"),
    UniqueConstraint("tenant_id", "event_id", name="audit_records_tenant_event_key"),
    CheckConstraint("sequence > 0", name="audit_records_sequence_positive"),
    Index("audit_records_tenant_time", "tenant_id", "occurred_at", "sequence"),
)

#: The last record of each tenant's chain; its row lock serialises a tenant's appends.
chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

#: Where a tenant's chain starts after retention removed its beginning.
retention_checkpoints = Table(
    "audit_retention_checkpoints",
    metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    Column("removed_total", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Expired records removed from behind a younger one: position and content hash only.
retention_tombstones = Table(
    "audit_retention_tombstones",
    metadata,
    Column("tenant_id", Uuid, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "sequence", name="audit_retention_tombstones_pkey"),
)

#: The database's own floor under retention: the job may never delete anything younger.
policy = Table(
    "audit_policy",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("min_retention_days", Integer, nullable=False),
    CheckConstraint("id = 1", name="audit_policy_single_row"),
    CheckConstraint("min_retention_days >= 1", name="audit_policy_floor_positive"),
)
