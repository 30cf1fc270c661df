"""Settings shared by every service: environment variables (``TENANTRY_*``) with local defaults."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tenantry_common.events import ResponseFormat, TenantConfig, Tier

Environment = Literal["local", "test", "production"]

#: Which of OpenAI's response formats a model's server takes (``ModelSpec.response_formats``).
ResponseFormats = Literal["json_schema", "json_object_schema", "json_object", "text"]

_ANSWER_FORMATS: dict[ResponseFormats, list[str]] = {
    "json_schema": ["text", "json_object", "json_schema"],
    "json_object_schema": ["text", "json_object", "json_schema"],
    "json_object": ["text", "json_object"],
    "text": ["text"],
}


class ModelSpec(BaseModel):
    """One entry of the model catalogue: where a model is served and what it costs."""

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    served_name: str | None = Field(default=None, description="Model name the server expects.")
    input_price_micros_per_mtok: int = Field(ge=0, description="Micro-dollars per 1M input tokens.")
    output_price_micros_per_mtok: int = Field(
        ge=0, description="Micro-dollars per 1M output tokens."
    )
    context_window: int = Field(ge=256)
    tokenizer: str | None = Field(default=None, description="Tokenizer to count with, if needed.")
    stop: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Stop sequences sent with every call, e.g. the prompt's own markup for a "
        "small model that tends to echo it. A request's own (up to 4) are sent with them, so "
        "keep this empty for a provider that takes at most 4 in all, as OpenAI's API does.",
        examples=[["<passage", "</passage"]],
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        max_length=3,
        description="Catalogue models asked in turn when this one cannot answer (its provider "
        "unreachable, failing or timing out after the retries) before any of the answer was "
        "generated; only those the tenant allows. The answer, its usage and its cost are the "
        "fallback's.",
        examples=[["gpt-4o-mini"]],
    )

    response_formats: ResponseFormats = Field(
        default="json_schema",
        description="Which of OpenAI's response formats the model's server takes: "
        "'json_schema' JSON mode and structured outputs, as OpenAI's API takes them (OpenAI, "
        "vLLM, llama.cpp's llama-server); 'json_object_schema' JSON mode, with a schema inside "
        "it as llama-cpp-python's server takes one (a json_schema request is sent that way); "
        "'json_object' JSON mode only; 'text' neither. The edge refuses a request for a format "
        "its model does not take, and inference asks no fallback that does not take it.",
    )
    tool_calls: bool = Field(
        default=True,
        description="Whether the model's server takes OpenAI's tools (function calling). The "
        "edge refuses a request offering tools to a model that does not, and inference asks "
        "no fallback that does not.",
    )
    owner: uuid.UUID | None = Field(
        default=None,
        description="The tenant whose own model this is (one fine-tuned on its data, say): only "
        "that tenant may allow and call it, and only with its fine_tuning feature on; to every "
        "other tenant it is not in the catalogue. Absent: a model any tenant may be allowed.",
    )
    tiers: list[Tier] | None = Field(
        default=None,
        min_length=1,
        description="The plans whose tenants may be allowed this model (a costly one for the "
        "enterprise tier only, say). Absent: every plan.",
        examples=[["pro", "enterprise"]],
    )

    def visible_to(self, tenant_id: uuid.UUID) -> bool:
        """Whether a tenant may know of this model: a shared one, or its own."""
        return self.owner is None or self.owner == tenant_id

    def open_to(self, tier: Tier) -> bool:
        """Whether tenants on ``tier`` may be allowed this model."""
        return self.tiers is None or tier in self.tiers

    def serves(self, tenant_id: uuid.UUID, config: TenantConfig) -> bool:
        """Whether a tenant, as its config stands, may use this model: one open to its tier,
        and either shared or its own with its fine_tuning feature on."""
        if not self.open_to(config.tier):
            return False
        return self.owner is None or (self.owner == tenant_id and config.features.fine_tuning)

    @property
    def answer_formats(self) -> list[str]:
        """The ``response_format`` types a client may ask of the model, as OpenAI names them."""
        return _ANSWER_FORMATS[self.response_formats]

    def takes(self, form: ResponseFormat | None) -> bool:
        """Whether the model's server can answer in ``form`` (None: text, always)."""
        return form is None or form.type in self.answer_formats

    def response_format_body(self, form: ResponseFormat) -> dict[str, Any]:
        """``form`` as the model's server takes it (one it ``takes``)."""
        if form.json_schema is not None and self.response_formats == "json_object_schema":
            return {"type": "json_object", "schema": form.json_schema.schema_}
        return form.model_dump()

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Exact integer cost, rounded up to the next micro-dollar."""
        numerator = (
            prompt_tokens * self.input_price_micros_per_mtok
            + completion_tokens * self.output_price_micros_per_mtok
        )
        return -(-numerator // 1_000_000)


LOCAL_MODEL = "smollm2-135m"

#: The openings of inference's prompt fences (tenantry_inference.prompts), as stop sequences.
PROMPT_MARKUP_STOPS = ("<passage", "</passage", "<untrusted_passages", "</untrusted_passages")


def default_catalogue() -> dict[str, ModelSpec]:
    """The local SmolLM2 server, plus OpenAI's models (usable once OPENAI_API_KEY is set)."""
    return {
        LOCAL_MODEL: ModelSpec(
            base_url="http://127.0.0.1:8081/v1",
            served_name=LOCAL_MODEL,
            # Nominal prices so that cost accounting is visible locally; operators set real ones.
            input_price_micros_per_mtok=50_000,
            output_price_micros_per_mtok=100_000,
            context_window=2048,
            # The 135M model sometimes goes on to recite a passage with its fence tags; an
            # answer ends where it starts to.
            stop=list(PROMPT_MARKUP_STOPS),
            # llama-cpp-python's server: JSON mode, a schema inside it (not OpenAI's json_schema).
            response_formats="json_object_schema",
        ),
        "gpt-4o-mini": ModelSpec(
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            input_price_micros_per_mtok=150_000,
            output_price_micros_per_mtok=600_000,
            context_window=128_000,
        ),
    }


class CommonSettings(BaseSettings):
    """What every service needs. Subclasses add their own fields and defaults."""

    model_config = SettingsConfigDict(
        env_prefix="TENANTRY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    service_name: str = "tenantry"
    environment: Environment = "local"
    log_level: str = "INFO"
    broker_message_log_level: Literal["DEBUG", "INFO", "WARNING"] = Field(
        default="DEBUG",
        description="Level of FastStream's per-message 'Received'/'Processed' lines: below "
        "INFO they cost nothing (at INFO they were ~9% of a consumer's CPU under load).",
    )

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_request_timeout_ms: int = 30_000
    consumer_max_attempts: int = Field(default=3, ge=1, description="Tries before the DLQ.")
    consumer_retry_backoff_s: float = Field(default=0.2, ge=0.0)
    consumer_workers: int = Field(
        default=1, ge=1, description="Consumers per group (≤ partitions)."
    )
    graceful_timeout_s: float = Field(
        default=20.0, description="Time to finish in-flight messages."
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=3,
        ge=0,
        description=(
            "Longest a hot-path consumer's fetch waits for data: 3 ms for Tansu, 500 on"
            " Apache Kafka (see messaging.py)."
        ),
    )
    kafka_idle_fetch_max_wait_ms: int = Field(
        default=50,
        ge=0,
        description=(
            "A hot-path consumer's fetch wait once it has been idle for kafka_idle_after_s"
            " (fetchwait.py); not above kafka_fetch_max_wait_ms turns this off."
        ),
    )
    kafka_idle_after_s: float = Field(
        default=2.0, ge=0.1, description="Quiet time before a hot-path consumer waits longer."
    )
    gc_gen0_threshold: int = Field(
        default=10_000,
        ge=100,
        description="Young-generation threshold of the served process's garbage collector "
        "(CPython's default is 700; see tenantry_common.heap).",
    )
    kafka_linger_ms: int = Field(
        default=0, ge=0, description="Producer linger; 0 sends at once (batches form under load)."
    )

    postgres_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/tenantry"
    redis_url: str = "redis://127.0.0.1:6379/0"

    http_host: str = "127.0.0.1"
    http_port: int = 8000

    otel_exporter_otlp_endpoint: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=default_catalogue)
    cache_similarity_floor: float = Field(
        default=0.85, ge=0.0, le=1.0, description="No tenant may lower its threshold below this."
    )

    @field_validator("models")
    @classmethod
    def _fallbacks_are_in_the_catalogue(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name, spec in models.items():
            for fallback in spec.fallbacks:
                if fallback == name or fallback not in models:
                    raise ValueError(
                        f"model {name!r}: fallback {fallback!r} must be another catalogue model"
                    )
                if models[fallback].owner not in (None, spec.owner):
                    # A tenant's own model would answer (and be named to) other tenants.
                    raise ValueError(
                        f"model {name!r}: fallback {fallback!r} is one tenant's own model; a "
                        "fallback must be shared, or the same tenant's"
                    )
        if models:
            # New tenants start on a shared model open to their tier.
            shared = [spec for spec in models.values() if spec.owner is None]
            if bare := [t.value for t in Tier if not any(spec.open_to(t) for spec in shared)]:
                raise ValueError(
                    f"the catalogue needs a shared model (no owner) open to each tier; none is "
                    f"open to {bare}"
                )
        return models

    def model_api_key(self, model: str) -> str | None:
        """The API key for a catalogue model, read from the environment variable it names."""
        import os

        spec = self.models[model]
        return os.environ.get(spec.api_key_env) if spec.api_key_env else None


def refuse_placeholder(value: SecretStr | None, environment: Environment, name: str) -> None:
    """Outside local and test runs, a secret left empty or at a placeholder is an error."""
    if environment in ("local", "test"):
        return
    raw = value.get_secret_value() if value is not None else ""
    if not raw or raw.startswith(("changeme", "local-")):
        raise ValueError(f"{name} must be set to a real secret when environment={environment}")
