"""Subscribers of the edge: services' acknowledgements of tenant onboarding and offboarding,
retrieval's word that a document is indexed, and the documents it gave up on."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaRouter
from faststream.message import StreamMessage
from tenantry_common.events import DocumentIndexed, LifecycleEvent, TenantLifecycleAcknowledged
from tenantry_common.messaging import subscriber_options
from tenantry_common.topics import DOCUMENT_STATUS, DOCUMENTS, TENANTS_LIFECYCLE

from tenantry_auth import service
from tenantry_auth.config import Settings

LIFECYCLE_GROUP = "edge.lifecycle"
DOCUMENTS_GROUP = "edge.documents"
FAILED_DOCUMENTS_GROUP = "edge.documents-failed"


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """The record's bytes as they are: a dead-lettered record may be anything, and must not
    fail in decoding (its own dead letter would have no topic to go to)."""
    return bytes(message.body)


def lifecycle_router(settings: Settings, edge: service.Edge) -> KafkaRouter:
    """The lifecycle and document-status subscribers (groups ``edge.lifecycle``,
    ``edge.documents`` and ``edge.documents-failed``: each event handled by one replica)."""
    router = KafkaRouter()

    @router.subscriber(TENANTS_LIFECYCLE.name, **subscriber_options(settings, LIFECYCLE_GROUP))  # type: ignore[untyped-decorator]
    async def on_lifecycle(event: LifecycleEvent) -> None:
        # TenantProvisioned/TenantOffboarded are the edge's own requests: nothing to do.
        if isinstance(event, TenantLifecycleAcknowledged):
            await service.on_lifecycle_ack(edge=edge, ack=event)

    @router.subscriber(DOCUMENT_STATUS.name, **subscriber_options(settings, DOCUMENTS_GROUP))  # type: ignore[untyped-decorator]
    async def on_document_status(event: DocumentIndexed) -> None:
        await service.on_document_indexed(edge=edge, event=event)

    @router.subscriber(  # type: ignore[untyped-decorator]
        DOCUMENTS.dlq,
        **subscriber_options(settings, FAILED_DOCUMENTS_GROUP),
        decoder=raw_body,
    )
    async def on_document_dead_lettered(body: bytes) -> None:
        await service.on_document_dead_lettered(edge=edge, raw=body)

    return router
