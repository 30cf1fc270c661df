"""FastStream subscribers: decode, call one service function, publish."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaBroker
from tenantry_common.events import (
    AuditRecorded,
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ContextRetrieved,
    LifecycleAction,
    LifecycleEvent,
    ReplyTo,
    TenantConfigChanged,
    TenantLifecycleAcknowledged,
    TenantOffboarded,
    TenantProvisioned,
    UsageRecorded,
)
from tenantry_common.fetchwait import FetchWait
from tenantry_common.ids import derived_id
from tenantry_common.inflight import windowed
from tenantry_common.messaging import MANUAL, publish_event, subscriber_options
from tenantry_common.topics import AUDIT, CHAT_CONTEXT, TENANTS_CONFIG, TENANTS_LIFECYCLE, USAGE

from tenantry_inference.config import Settings
from tenantry_inference.service import (
    SOURCE,
    InferenceDeps,
    TenantDirectory,
    answer_request,
    apply_config_changed,
    apply_offboarded,
    apply_provisioned,
)


class BrokerOutbox:
    """The service's events, published on their topics (answers to the request's partition)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def response(
        self, event: ChatDelta | ChatCompleted | ChatFailed, reply_to: ReplyTo
    ) -> None:
        """Publish to the partition the asking edge replica reads."""
        await publish_event(self.broker, reply_to.topic, event, partition=reply_to.partition)

    async def usage(self, event: UsageRecorded) -> None:
        """Publish usage for metering."""
        await publish_event(self.broker, USAGE, event)

    async def audit(self, event: AuditRecorded) -> None:
        """Publish an audit record."""
        await publish_event(self.broker, AUDIT, event)


def _every_replica() -> dict[str, Any]:
    # No consumer group: this process reads every partition from the start, so each replica
    # holds every tenant's config and name (a group would split them between replicas).
    return {"group_id": None, "ack_policy": MANUAL, "auto_offset_reset": "earliest"}


def register_handlers(broker: KafkaBroker, *, settings: Settings, deps: InferenceDeps) -> None:
    """Declare the service's subscribers on the broker."""
    outbox = BrokerOutbox(broker)
    directory: TenantDirectory = deps.directory

    # One consumer with many requests in flight (a model call takes seconds); requests need no
    # order between them, so their offsets are committed in order as they finish (inflight.py).
    chat_options = subscriber_options(settings, settings.chat_group_id, low_latency=True) | {
        "max_workers": 1
    }
    chat = windowed(
        broker.subscriber(CHAT_CONTEXT.name, **chat_options),
        window=settings.chat_concurrency,
        fetch_wait=FetchWait.from_settings(settings),
    )

    @chat
    async def on_context_retrieved(event: ContextRetrieved) -> None:
        await answer_request(request=event, deps=deps, outbox=outbox)

    @broker.subscriber(TENANTS_CONFIG.name, **_every_replica())  # type: ignore[untyped-decorator]
    async def on_tenant_config_changed(event: TenantConfigChanged) -> None:
        apply_config_changed(directory=directory, event=event)

    @broker.subscriber(TENANTS_LIFECYCLE.name, **_every_replica())  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle_seen(event: LifecycleEvent) -> None:
        _apply_lifecycle(directory, event)

    @broker.subscriber(
        TENANTS_LIFECYCLE.name, **subscriber_options(settings, settings.lifecycle_group_id)
    )  # type: ignore[untyped-decorator]
    async def on_tenant_lifecycle(event: LifecycleEvent) -> None:
        action = _apply_lifecycle(directory, event)
        if action is None:
            return
        await publish_event(
            broker,
            TENANTS_LIFECYCLE,
            TenantLifecycleAcknowledged(
                event_id=derived_id(event.event_id, f"ack.{SOURCE}"),
                tenant_id=event.tenant_id,
                service=SOURCE,
                action=action,
                succeeded=True,
                detail="tenant registered for leakage checks"
                if action is LifecycleAction.PROVISIONED
                else "tenant config and registry entry removed",
            ),
        )


def _apply_lifecycle(directory: TenantDirectory, event: LifecycleEvent) -> LifecycleAction | None:
    if isinstance(event, TenantProvisioned):
        apply_provisioned(directory=directory, event=event)
        return LifecycleAction.PROVISIONED
    if isinstance(event, TenantOffboarded):
        apply_offboarded(directory=directory, event=event)
        return LifecycleAction.OFFBOARDED
    return None  # other services' acknowledgements
