"""Subscribers of the edge: services' acknowledgements of tenant onboarding and offboarding."""

from __future__ import annotations

from faststream.kafka import KafkaRouter
from tenantry_common.events import LifecycleEvent, TenantLifecycleAcknowledged
from tenantry_common.messaging import subscriber_options
from tenantry_common.topics import TENANTS_LIFECYCLE

from tenantry_auth import service
from tenantry_auth.config import Settings

LIFECYCLE_GROUP = "edge.lifecycle"


def lifecycle_router(settings: Settings, edge: service.Edge) -> KafkaRouter:
    """The lifecycle subscriber (group ``edge.lifecycle``: each ack handled by one replica)."""
    router = KafkaRouter()

    @router.subscriber(TENANTS_LIFECYCLE.name, **subscriber_options(settings, LIFECYCLE_GROUP))  # type: ignore[untyped-decorator]
    async def on_lifecycle(event: LifecycleEvent) -> None:
        # TenantProvisioned/TenantOffboarded are the edge's own requests: nothing to do.
        if isinstance(event, TenantLifecycleAcknowledged):
            await service.on_lifecycle_ack(edge=edge, ack=event)

    return router
