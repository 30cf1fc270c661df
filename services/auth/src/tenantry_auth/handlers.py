"""Subscribers of the edge: services' acknowledgements of tenant onboarding and offboarding,
and retrieval's word that a document is indexed."""

from __future__ import annotations

from faststream.kafka import KafkaRouter
from tenantry_common.events import DocumentIndexed, LifecycleEvent, TenantLifecycleAcknowledged
from tenantry_common.messaging import subscriber_options
from tenantry_common.topics import DOCUMENT_STATUS, TENANTS_LIFECYCLE

from tenantry_auth import service
from tenantry_auth.config import Settings

LIFECYCLE_GROUP = "edge.lifecycle"
DOCUMENTS_GROUP = "edge.documents"


def lifecycle_router(settings: Settings, edge: service.Edge) -> KafkaRouter:
    """The lifecycle and document-status subscribers (groups ``edge.lifecycle`` and
    ``edge.documents``: each event handled by one replica)."""
    router = KafkaRouter()

    @router.subscriber(TENANTS_LIFECYCLE.name, **subscriber_options(settings, LIFECYCLE_GROUP))  # type: ignore[untyped-decorator]
    async def on_lifecycle(event: LifecycleEvent) -> None:
        # TenantProvisioned/TenantOffboarded are the edge's own requests: nothing to do.
        if isinstance(event, TenantLifecycleAcknowledged):
            await service.on_lifecycle_ack(edge=edge, ack=event)

    @router.subscriber(DOCUMENT_STATUS.name, **subscriber_options(settings, DOCUMENTS_GROUP))  # type: ignore[untyped-decorator]
    async def on_document_status(event: DocumentIndexed) -> None:
        await service.on_document_indexed(edge=edge, event=event)

    return router
