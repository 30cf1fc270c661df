"""Prometheus metrics of LLM calls (names from the seed; tenant ids are fine as labels).

``llm_cache_hits_total`` belongs to retrieval, which answers cache hits without calling here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from tenantry_common.metrics import LATENCY_BUCKETS


class InferenceMetrics:
    """The service's LLM metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llm_requests_total",
            "Chat requests answered by a model, by outcome (success or a failure reason).",
            ["tenant_id", "model", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "llm_request_latency_seconds",
            "Time from receiving the context to the final answer.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "llm_time_to_first_token_seconds",
            "Time from calling the model to its first streamed token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llm_tokens_total",
            "Tokens consumed, by type (prompt or completion).",
            ["tenant_id", "model", "type"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "llm_fallbacks_total",
            "Requests handed to a fallback model because the one asked could not answer, by "
            "the model that failed, the fallback and the failure.",
            ["model", "fallback", "reason"],
            registry=registry,
        )
        self.config_waits = Counter(
            "llm_config_waits_total",
            "Requests that arrived before the tenant config version they were admitted with, "
            "by outcome: the config arrived within the wait, or the wait timed out.",
            ["outcome"],
            registry=registry,
        )
        self.leakage = Counter(
            "llm_leakage_findings_total",
            "Leakage findings, by stage (prompt/answer) and action (blocked/redacted).",
            ["stage", "action"],
            registry=registry,
        )
