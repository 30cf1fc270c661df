"""Kafka topics: names, partition counts and configs, declared once for every service."""

from __future__ import annotations

from dataclasses import dataclass, field

DLQ_SUFFIX = ".dlq"

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the platform declares it (created by one idempotent step)."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX


CHAT_REQUESTS = TopicSpec(
    "chat.requests.v1",
    12,
    description="ChatRequested (RAG or cache on), SearchRequested: edge → retrieval",
)
CHAT_CONTEXT = TopicSpec(
    "chat.context.v1",
    12,
    description="ContextRetrieved: retrieval → inference; edge → inference with RAG and cache off",
)
CHAT_RESPONSES = TopicSpec(
    "chat.responses.v1",
    16,
    description="ChatDelta/ChatCompleted/ChatFailed, SearchCompleted; each edge replica reads "
    "its own partition",
)
DOCUMENTS = TopicSpec("documents.v1", 12, description="DocumentSubmitted/DocumentDeleted")
DOCUMENT_STATUS = TopicSpec(
    "documents.status.v1", 6, description="DocumentIndexed: retrieval → edge (document status)"
)
TENANTS_CONFIG = TopicSpec(
    "tenants.config.v1",
    6,
    {"cleanup.policy": "compact"},
    "TenantConfigChanged, compacted: the latest per tenant",
)
TENANTS_LIFECYCLE = TopicSpec(
    "tenants.lifecycle.v1", 6, description="TenantProvisioned/TenantOffboarded and service acks"
)
USAGE = TopicSpec(
    "usage.v1", 12, {"retention.ms": str(400 * DAY_MS)}, "UsageRecorded (analysts' topic)"
)
USAGE_DAILY = TopicSpec(
    "usage.daily.v1",
    6,
    {"cleanup.policy": "compact"},
    "UsageRolledUp: per tenant, model and day (analysts' topic)",
)
BUDGETS = TopicSpec("budgets.v1", 6, description="BudgetThresholdCrossed/BudgetExhausted")
AUDIT = TopicSpec("audit.v1", 12, {"retention.ms": str(30 * DAY_MS)}, "AuditRecorded")
AUDIT_ANCHORS = TopicSpec(
    "audit.anchors.v1",
    3,
    {"retention.ms": str(400 * DAY_MS)},
    "AuditChainAnchored: chain heads to anchor outside the database",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CHAT_REQUESTS,
    CHAT_CONTEXT,
    CHAT_RESPONSES,
    DOCUMENTS,
    DOCUMENT_STATUS,
    TENANTS_CONFIG,
    TENANTS_LIFECYCLE,
    USAGE,
    USAGE_DAILY,
    BUDGETS,
    AUDIT,
    AUDIT_ANCHORS,
)


def all_topics_with_dlqs() -> list[TopicSpec]:
    """Every topic and its dead-letter topic (same partitions; long retention for forensics)."""
    specs: list[TopicSpec] = []
    for spec in ALL_TOPICS:
        specs.append(spec)
        specs.append(
            TopicSpec(spec.dlq, 3, {"retention.ms": str(30 * DAY_MS)}, f"DLQ of {spec.name}")
        )
    return specs
