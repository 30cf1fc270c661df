"""Retrieval's Prometheus metrics (tenant ids are fine as labels; text never is)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from tenantry_common.metrics import LATENCY_BUCKETS


class RetrievalMetrics:
    """Cache hits and misses, ingested chunks, embedding and search latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cache_hits = Counter(
            "llm_cache_hits_total",
            "Questions answered from the tenant's semantic cache.",
            ["tenant_id"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "llm_cache_misses_total",
            "Questions the semantic cache could not answer (cache enabled).",
            ["tenant_id"],
            registry=registry,
        )
        self.cache_filtered_lookups = Counter(
            "retrieval_cache_filtered_lookups_total",
            "Cache lookups whose nearest entries were all out of scope (older versions, other "
            "models, expired), so the store's slower filtered query ran as well.",
            registry=registry,
        )
        self.chunks_ingested = Counter(
            "retrieval_chunks_ingested_total",
            "Document chunks embedded and stored.",
            ["tenant_id"],
            registry=registry,
        )
        self.embed_seconds = Histogram(
            "retrieval_embed_seconds",
            "Time to embed one question (including the micro-batch wait).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.question_vectors_reused = Counter(
            "retrieval_question_vectors_reused_total",
            "Question embeddings served from the per-tenant recent-questions memory.",
            ["purpose"],
            registry=registry,
        )
        self.search_seconds = Histogram(
            "retrieval_search_seconds",
            "Time of one vector search in a tenant's namespace.",
            ["namespace_kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
