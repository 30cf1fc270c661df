"""Retrieval's subscribers: decode, call one service operation, publish what it returns.

Questions, documents, lifecycle and cache fill each have their own consumer group, so a large
document being embedded never holds up the questions behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from pydantic import TypeAdapter
from tenantry_common.events import (
    ChatCompleted,
    ChatResponseEvent,
    DocumentDeleted,
    DocumentEvent,
    LifecycleEvent,
    QuestionEvent,
    SearchRequested,
    TenantOffboarded,
    TenantProvisioned,
)
from tenantry_common.fetchwait import FetchWait
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
        fetch_wait=FetchWait.from_settings(settings),
    )

    @questions
    async def on_question(event: QuestionEvent) -> None:
        if isinstance(event, SearchRequested):
            await publish_all(broker, await service.search(request=event))
        else:
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

    fill_options = subscriber_options(settings, group_prefix + GROUP_CACHE_FILL)
    fill_options.pop("max_workers", None)
    responses = broker.subscriber(
        CHAT_RESPONSES.name,
        **fill_options,
        batch=True,
        max_records=settings.cache_fill_batch_max_records,
        decoder=decode_cache_fills,
    )

    @responses  # type: ignore[untyped-decorator]
    async def on_chat_responses(answers: list[ChatCompleted]) -> None:
        await service.fill_cache(completed=answers)


def may_fill_cache(headers: Mapping[str, str]) -> bool:
    """Whether a response on chat.responses.v1 is decoded for the cache fill.

    Its headers tell (``publish_event`` writes them): only a ChatCompleted not marked
    uncacheable. A message without an ``event_type`` header is decoded as before, so malformed
    bytes are still dead-lettered; the edge replica reading a partition decodes all of its.
    """
    event_type = headers.get("event_type")
    if event_type is None:
        return True
    return event_type == "ChatCompleted" and headers.get(CACHEABLE_HEADER) != "false"


_RESPONSE: TypeAdapter[ChatResponseEvent] = TypeAdapter(ChatResponseEvent)


async def decode_cache_fills(message: StreamMessage[Any]) -> list[ChatCompleted]:
    """The answers of a batch of chat.responses.v1 that the cache may keep.

    Every answer of the platform passes this consumer group, most of them deltas, failures and
    gateway-mode answers the cache never keeps: they are passed over by their headers, in one
    handler call per batch, without decoding their bodies (one call per record was ≈ 8 % of the
    platform's CPU per gateway-mode request). A record that must be decoded and is not a valid
    response raises here, and the reliable-consumer middleware bisects the batch down to it and
    dead-letters it. Async on purpose: FastStream runs a sync decoder in a worker thread.
    """
    bodies = cast("list[bytes]", message.body)  # a batch message's body: one per record
    headers = message.batch_headers or [{}] * len(bodies)
    answers: list[ChatCompleted] = []
    for body, record_headers in zip(bodies, headers, strict=True):
        if not may_fill_cache(record_headers):
            continue
        event = _RESPONSE.validate_json(body)
        if isinstance(event, ChatCompleted):
            answers.append(event)
    return answers
