"""The edge's settings (environment variables ``TENANTRY_*``)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from tenantry_common.settings import CommonSettings, refuse_placeholder

DEFAULT_LIFECYCLE_SERVICES = ("retrieval", "inference", "metering", "audit")


class ExternalIssuer(BaseModel):
    """A customer's identity provider whose tokens the edge accepts, for one tenant only."""

    issuer: str = Field(min_length=1)
    jwks_url: str = Field(min_length=1)
    tenant_id: uuid.UUID = Field(description="The only tenant this issuer may speak for.")


class Settings(CommonSettings):
    """Settings of the edge (services/auth)."""

    model_config = SettingsConfigDict(
        env_prefix="TENANTRY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    service_name: str = "auth"
    postgres_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/tenantry_auth"
    http_port: int = 8000
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="How other services reach this edge."
    )

    token_ttl_s: int = Field(default=900, ge=60, le=24 * 3600)
    #: Encrypts the signing keys' private halves at rest (AES-GCM, key derived by HKDF).
    signing_key_secret: SecretStr = SecretStr("local-dev-signing-secret")
    key_refresh_s: float = Field(default=15.0, gt=0, description="Reload signing keys this often.")
    #: When set, an operator client ``bootstrap_operator_client_id`` with this secret is
    #: created (or its secret reset) at start: the documented way to the first operator token.
    bootstrap_operator_secret: SecretStr | None = None
    bootstrap_operator_client_id: str = "operator"
    external_issuers: list[ExternalIssuer] = Field(default_factory=list)
    password_hash_time_cost: int = Field(default=2, ge=1)
    password_hash_memory_kib: int = Field(default=19_456, ge=1024)

    lifecycle_services: list[str] = Field(default_factory=lambda: list(DEFAULT_LIFECYCLE_SERVICES))
    onboarding_timeout_s: float = Field(default=120.0, gt=0)
    onboarding_sweep_s: float = Field(default=2.0, gt=0)

    config_cache_max_age_s: float = Field(
        default=30.0,
        gt=0,
        description="Reread a tenant's configuration at least this often, even when Redis "
        "recorded no newer version (the bound if recording a change in Redis failed).",
    )
    config_cache_size: int = Field(default=10_000, ge=1, description="Tenants held in memory.")

    chat_deadline_s: float = Field(default=60.0, gt=0)
    conversation_turns: int = Field(
        default=10, ge=1, le=100, description="Turns of a /v1/chat conversation kept for the next."
    )
    conversation_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="A conversation is forgotten this long after its last turn.",
    )
    reply_lease_namespace: str = "tenantry:edge:reply-partition"
    reply_lease_ttl_s: float = Field(default=10.0, gt=1)
    redis_retry_after_s: int = Field(default=5, ge=1)

    max_document_bytes: int = Field(
        default=1_000_000, ge=1, description="A document's text (UTF-8 bytes), however sent."
    )
    max_upload_bytes: int = Field(
        default=20_000_000,
        ge=1,
        description="An uploaded PDF or .docx file; its text must still fit max_document_bytes.",
    )
    max_upload_pages: int = Field(default=2_000, ge=1, description="Pages of a PDF read.")
    extract_timeout_s: float = Field(
        default=60.0, gt=0, description="Reading a file's text; the reader is killed after it."
    )
    extract_memory_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=64 * 1024 * 1024,
        description="The address space a file's reader (a child process) may use.",
    )
    extract_concurrency: int = Field(
        default=1, ge=1, description="Files read at once per replica (each a child process)."
    )
    max_json_body_bytes: int = Field(default=256_000, ge=1024)

    metering_url: str = "http://127.0.0.1:8003"
    audit_url: str = "http://127.0.0.1:8004"
    forward_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        refuse_placeholder(self.signing_key_secret, self.environment, "signing_key_secret")
        if self.bootstrap_operator_secret is not None:
            refuse_placeholder(
                self.bootstrap_operator_secret, self.environment, "bootstrap_operator_secret"
            )
            if len(self.bootstrap_operator_secret.get_secret_value()) < 16:
                raise ValueError("bootstrap_operator_secret must be at least 16 characters")
        return self
