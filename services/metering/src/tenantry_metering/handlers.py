"""Metering's subscribers: decode, call the runtime; the broker factory commits or dead-letters."""

from __future__ import annotations

from typing import Any, cast

from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from tenantry_common.batching import lingering
from tenantry_common.events import (
    LifecycleEvent,
    TenantConfigChanged,
    TenantOffboarded,
    TenantProvisioned,
    UsageRecorded,
)
from tenantry_common.messaging import MANUAL, subscriber_options
from tenantry_common.topics import TENANTS_CONFIG, TENANTS_LIFECYCLE, USAGE

from tenantry_metering.config import Settings
from tenantry_metering.runtime import Runtime


async def decode_usage_batch(message: StreamMessage[Any]) -> list[UsageRecorded]:
    """Validate each record's bytes straight into a UsageRecorded (pydantic's JSON parser).

    FastStream's own batch decoder parses every record again and ``json.loads`` it, and the
    handler's signature then validates the dicts: twice the work. A record that is not a valid
    UsageRecorded raises ValidationError here, which dead-letters it exactly as before (the
    reliable-consumer middleware bisects the batch down to it). Async on purpose: FastStream
    runs a sync decoder in a worker thread, which only adds hand-offs (it holds the GIL).
    """
    bodies = cast("list[bytes]", message.body)  # a batch message's body: one per record
    # The model's validator itself: ``model_validate_json`` is this plus argument handling.
    validate = UsageRecorded.__pydantic_validator__.validate_json
    return [validate(body) for body in bodies]


def usage_subscriber_options(settings: Settings) -> dict[str, Any]:
    """A batch subscriber: one ledger transaction per batch part (``Runtime.ingest``) and one
    offset commit per partition per batch, after every part is durable (the reliable-consumer
    middleware bisects a failing batch down to the bad records)."""
    options = subscriber_options(settings, settings.usage_group_id)
    options.pop("max_workers", None)
    return options | {
        "batch": True,
        "max_records": settings.usage_batch_max_records,
        "batch_timeout_ms": settings.usage_batch_timeout_ms,
        "decoder": decode_usage_batch,
    }


def every_replica() -> dict[str, Any]:
    """No consumer group: each process reads every partition from the start (the whole
    compacted config, every offboarding), so every replica knows every tenant."""
    return {"group_id": None, "ack_policy": MANUAL, "auto_offset_reset": "earliest"}


def register_handlers(broker: KafkaBroker, runtime: Runtime, settings: Settings) -> None:
    """Declare metering's subscribers on the broker."""

    usage = lingering(
        broker.subscriber(USAGE.name, **usage_subscriber_options(settings)),
        min_records=settings.usage_batch_min_records,
        linger_ms=settings.usage_batch_linger_ms,
    )

    # FastStream's decorators are untyped (options come as a dict); the signatures matter.
    @usage
    async def on_usage_recorded(events: list[UsageRecorded]) -> None:
        await runtime.ingest(events)

    @broker.subscriber(TENANTS_CONFIG.name, **every_replica())  # type: ignore[untyped-decorator]
    async def on_tenant_config_changed(event: TenantConfigChanged) -> None:
        await runtime.config_changed(event)

    @broker.subscriber(TENANTS_LIFECYCLE.name, **every_replica())  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle_seen(event: LifecycleEvent) -> None:
        if isinstance(event, TenantOffboarded):
            runtime.directory.offboarded.add(event.tenant_id)

    @broker.subscriber(
        TENANTS_LIFECYCLE.name, **subscriber_options(settings, settings.lifecycle_group_id)
    )  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle(event: LifecycleEvent) -> None:
        if isinstance(event, TenantProvisioned):
            await runtime.provisioned(event)
        elif isinstance(event, TenantOffboarded):
            await runtime.offboarded(event)
        # Other services' acknowledgements pass by.
