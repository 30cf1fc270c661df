"""Audit's settings: two database roles (owner for migrations, writer for the service)."""

from __future__ import annotations

from pydantic import Field, model_validator
from sqlalchemy.engine import make_url
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import AUDIT_ANCHORS

#: The non-owner role the service connects as (created by the first migration).
WRITER_ROLE = "tenantry_audit_writer"


class AuditSettings(CommonSettings):
    """Environment ``TENANTRY_*``; the defaults work against the local Postgres (trust auth)."""

    service_name: str = "audit"
    http_port: int = 8004

    postgres_dsn: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/tenantry_audit",
        description="The owner's DSN: used only to create the database and run migrations.",
    )
    writer_dsn: str = Field(
        default=f"postgresql+asyncpg://{WRITER_ROLE}@127.0.0.1:5432/tenantry_audit",
        description="The service's DSN: a role with INSERT and SELECT on the records only.",
    )
    migrate_on_start: bool = Field(
        default=True, description="Create the database and migrate it (as the owner) at start."
    )
    jwks_url: str = "http://127.0.0.1:8000/.well-known/jwks.json"

    retention_days: int = Field(default=365, ge=1, description="Records older than this go.")
    retention_interval_s: float = Field(default=3600.0, gt=0, description="Retention job period.")
    retention_initial_delay_s: float = Field(default=60.0, ge=0)
    anchor_interval_s: float = Field(default=300.0, gt=0, description="Chain head publish period.")
    export_batch_rows: int = Field(default=1000, ge=1, le=100_000, description="Rows per fetch.")
    verify_batch_rows: int = Field(default=2000, ge=1, le=100_000)
    background_jobs: bool = Field(default=True, description="Run the anchor and retention loops.")
    anchors_topic: str = Field(
        default=AUDIT_ANCHORS.name,
        description="Where verify reads published chain heads (or a copy kept out of reach).",
    )
    anchors_bootstrap_servers: str | None = Field(
        default=None, description="The anchors' broker, if not kafka_bootstrap_servers."
    )
    anchors_read_timeout_s: float = Field(default=30.0, gt=0)
    records_batch_max_records: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Most audit.v1 records appended in one transaction (one offset commit).",
    )
    records_batch_timeout_ms: int = Field(
        default=100, ge=1, description="How long a batch fetch waits for records to arrive."
    )
    records_batch_min_records: int = Field(
        default=200,
        ge=1,
        description="A smaller batch waits up to records_batch_linger_ms for more records.",
    )
    records_batch_linger_ms: int = Field(
        default=100,
        ge=0,
        description="How long a small batch waits to fill (one transaction per batch); 0 takes "
        "batches as they come.",
    )

    @model_validator(mode="after")
    def _writer_is_not_the_owner(self) -> AuditSettings:
        # The append-only guarantee rests on the service not connecting as the table owner.
        owner = make_url(self.postgres_dsn).username
        writer = make_url(self.writer_dsn).username
        if self.environment == "production" and owner == writer:
            raise ValueError("writer_dsn must use a role other than the owner's")
        return self


def writer_dsn_for(owner_dsn: str) -> str:
    """The writer's DSN on the same database as an owner DSN (local and test setups)."""
    return str(make_url(owner_dsn).set(username=WRITER_ROLE, password=None).render_as_string(False))
