"""Subscribers: decode, call one service function, publish."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.batching import lingering
from tenantry_common.events import AuditRecorded, LifecycleEvent
from tenantry_common.messaging import publish_event, subscriber_options
from tenantry_common.topics import AUDIT, TENANTS_LIFECYCLE

from tenantry_audit import service
from tenantry_audit.config import AuditSettings
from tenantry_audit.metrics import AuditMetrics

RECORDS_GROUP = "audit.records"
LIFECYCLE_GROUP = "audit.lifecycle"


def records_subscriber_options(settings: AuditSettings, group_id: str) -> dict[str, Any]:
    """A batch subscriber: one append transaction and one offset commit per partition per batch.

    The reliable-consumer middleware bisects a failing batch down to its bad records (they are
    dead-lettered, the rest appended) and commits only after the batch has ended. One consumer
    per group member (no ``max_workers``): a batch holds a partition's records in offset order,
    and ``append_records`` keeps each tenant's events in that order, so chains follow the topic.
    """
    options = subscriber_options(settings, group_id)
    options.pop("max_workers", None)
    return options | {
        "batch": True,
        "max_records": settings.records_batch_max_records,
        "batch_timeout_ms": settings.records_batch_timeout_ms,
    }


def register_handlers(
    broker: KafkaBroker,
    *,
    settings: AuditSettings,
    engine: AsyncEngine,
    metrics: AuditMetrics,
    group_prefix: str = "",
) -> None:
    """Subscribe audit to ``audit.v1`` and ``tenants.lifecycle.v1``."""

    records = lingering(
        broker.subscriber(
            AUDIT.name, **records_subscriber_options(settings, group_prefix + RECORDS_GROUP)
        ),
        min_records=settings.records_batch_min_records,
        linger_ms=settings.records_batch_linger_ms,
    )

    # FastStream's decorators are untyped; the handlers' own signatures are what matter.
    @records
    async def on_audit_recorded(events: list[AuditRecorded]) -> None:
        # Redeliveries (and a half of a bisected batch that runs again) are no-ops: the
        # append skips event ids already in the tenant's chain, under the head's lock.
        result = await service.append_records(engine=engine, events=events)
        metrics.appended.inc(result.appended)
        metrics.duplicates.inc(result.duplicates)

    @broker.subscriber(
        TENANTS_LIFECYCLE.name, **subscriber_options(settings, group_prefix + LIFECYCLE_GROUP)
    )  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle(event: LifecycleEvent) -> None:
        ack = service.lifecycle_ack(event=event)
        if ack is not None:
            await publish_event(broker, TENANTS_LIFECYCLE, ack)
