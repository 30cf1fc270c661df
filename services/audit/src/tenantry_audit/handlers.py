"""Subscribers: decode, call one service function, publish."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.events import AuditRecorded, LifecycleEvent
from tenantry_common.messaging import publish_event, subscriber_options
from tenantry_common.topics import AUDIT, TENANTS_LIFECYCLE

from tenantry_audit import service
from tenantry_audit.config import AuditSettings
from tenantry_audit.metrics import AuditMetrics

RECORDS_GROUP = "audit.records"
LIFECYCLE_GROUP = "audit.lifecycle"


def register_handlers(
    broker: KafkaBroker,
    *,
    settings: AuditSettings,
    engine: AsyncEngine,
    metrics: AuditMetrics,
    group_prefix: str = "",
) -> None:
    """Subscribe audit to ``audit.v1`` and ``tenants.lifecycle.v1``."""

    # FastStream's decorators are untyped; the handlers' own signatures are what matter.
    @broker.subscriber(AUDIT.name, **subscriber_options(settings, group_prefix + RECORDS_GROUP))  # type: ignore[untyped-decorator]
    async def on_audit_recorded(event: AuditRecorded) -> None:
        result = await service.append_records(engine=engine, events=[event])
        metrics.appended.inc(result.appended)
        metrics.duplicates.inc(result.duplicates)

    @broker.subscriber(
        TENANTS_LIFECYCLE.name, **subscriber_options(settings, group_prefix + LIFECYCLE_GROUP)
    )  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle(event: LifecycleEvent) -> None:
        ack = service.lifecycle_ack(event=event)
        if ack is not None:
            await publish_event(broker, TENANTS_LIFECYCLE, ack)
