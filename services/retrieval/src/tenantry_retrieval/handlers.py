"""Retrieval's subscribers: decode, call one service operation, publish what it returns.

Questions, documents, lifecycle and cache fill each have their own consumer group, so a large
document being embedded never holds up the questions behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from tenantry_common.events import (
    ChatCompleted,
    ChatRequested,
    ChatResponseEvent,
    DocumentDeleted,
    DocumentEvent,
    LifecycleEvent,
    TenantOffboarded,
    TenantProvisioned,
)
from tenantry_common.inflight import windowed
from tenantry_common.messaging import CACHEABLE_HEADER, publish_event, subscriber_options
from tenantry_common.topics import CHAT_REQUESTS, CHAT_RESPONSES, DOCUMENTS, TENANTS_LIFECYCLE

from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.service import Outgoing, RetrievalService

GROUP_QUESTIONS = "retrieval.questions"
GROUP_DOCUMENTS = "retrieval.documents"
GROUP_LIFECYCLE = "retrieval.lifecycle"
GROUP_CACHE_FILL = "retrieval.cache-fill"


async def publish_all(broker: KafkaBroker, outgoing: Sequence[Outgoing]) -> None:
    """Publish the events an operation produced, in order."""
    for item in outgoing:
        await publish_event(broker, item.topic, item.event, partition=item.partition)


def register_handlers(
    broker: KafkaBroker,
    service: RetrievalService,
    settings: RetrievalSettings,
    *,
    group_prefix: str = "",
) -> None:
    """Declare retrieval's four subscribers on the broker (``group_prefix`` isolates tests)."""
    # One consumer with many questions in flight, so that a burst shares one encode call;
    # questions need no order between them (offsets committed in order, inflight.py).
    question_options = subscriber_options(
        settings, group_prefix + GROUP_QUESTIONS, low_latency=True
    ) | {"max_workers": 1}
    questions = windowed(
        broker.subscriber(CHAT_REQUESTS.name, **question_options),
        window=settings.question_concurrency,
    )

    @questions
    async def on_chat_requested(event: ChatRequested) -> None:
        await publish_all(broker, await service.answer_question(request=event))

    document_options = subscriber_options(settings, group_prefix + GROUP_DOCUMENTS)

    @broker.subscriber(DOCUMENTS.name, **document_options)  # type: ignore[untyped-decorator]
    async def on_document(event: DocumentEvent) -> None:
        if isinstance(event, DocumentDeleted):
            await publish_all(broker, await service.delete_document(event=event))
        else:
            await publish_all(broker, await service.ingest_document(event=event))

    @broker.subscriber(  # type: ignore[untyped-decorator]
        TENANTS_LIFECYCLE.name, **subscriber_options(settings, group_prefix + GROUP_LIFECYCLE)
    )
    async def on_lifecycle(event: LifecycleEvent) -> None:
        if isinstance(event, TenantProvisioned):
            await publish_all(broker, await service.provision_tenant(event=event))
        elif isinstance(event, TenantOffboarded):
            await publish_all(broker, await service.offboard_tenant(event=event))
        # Other services' acknowledgements travel on the same topic: nothing to do.

    responses = broker.subscriber(
        CHAT_RESPONSES.name, **subscriber_options(settings, group_prefix + GROUP_CACHE_FILL)
    )

    @responses(filter=may_fill_cache)  # type: ignore[untyped-decorator]
    async def on_chat_response(event: ChatResponseEvent) -> None:
        if isinstance(event, ChatCompleted):
            await service.fill_cache(completed=event)

    @responses  # type: ignore[untyped-decorator]
    async def on_chat_response_not_cached(message: KafkaMessage) -> None:
        """Deltas, failures and answers that may not be cached: passed over, not decoded."""


async def may_fill_cache(message: StreamMessage[Any]) -> bool:
    """Whether a response on chat.responses.v1 is decoded for the cache fill.

    Its headers tell (``publish_event`` writes them): only a ChatCompleted not marked
    uncacheable. A message without an ``event_type`` header is decoded as before, so malformed
    bytes are still dead-lettered; the edge replica reading a partition decodes all of its.
    """
    event_type = message.headers.get("event_type")
    if event_type is None:
        return True
    return event_type == "ChatCompleted" and message.headers.get(CACHEABLE_HEADER) != "false"
