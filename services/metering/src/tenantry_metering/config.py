"""Metering's settings (environment variables ``TENANTRY_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from tenantry_common.settings import CommonSettings


class Settings(CommonSettings):
    """Settings of the metering service."""

    model_config = SettingsConfigDict(
        env_prefix="TENANTRY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    service_name: str = "metering"
    postgres_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/tenantry_metering"
    http_port: int = 8003
    jwks_url: str = Field(
        default="http://127.0.0.1:8000/.well-known/jwks.json",
        description="The edge's JWKS: keys to verify forwarded tokens with (never from a token).",
    )

    usage_group_id: str = "metering.usage"
    lifecycle_group_id: str = "metering.lifecycle"

    usage_batch_max_records: int = Field(default=4000, ge=1, le=10_000)
    usage_batch_parts: int = Field(
        default=4,
        ge=1,
        le=16,
        description=(
            "A usage batch is split by tenant into this many parts, recorded and settled "
            "concurrently (one transaction each): one part's Postgres and Redis round trips "
            "overlap another's Python work."
        ),
    )
    usage_batch_timeout_ms: int = Field(default=200, ge=1)
    usage_batch_min_records: int = Field(
        default=500,
        ge=1,
        description="A smaller batch waits up to usage_batch_linger_ms for more records.",
    )
    usage_batch_linger_ms: int = Field(
        default=100,
        ge=0,
        description="How long a small batch waits to fill (one transaction and one Redis "
        "settlement per tenant per batch); 0 takes batches as they come.",
    )
    rollup_interval_s: float = Field(default=2.0, gt=0, description="Publish rollups this often.")
    reconcile_interval_s: float = Field(default=60.0, gt=0, description="Redis ↔ ledger period.")
    reconcile_days: int = Field(
        default=2, ge=0, description="Also reconcile this many days before today (UTC)."
    )
    threshold_percents: tuple[int, ...] = (80,)
    query_max_days: int = Field(default=400, ge=1)
