"""Periodic work: publish chain heads (anchors) and apply retention, then publish what it did."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.events import AuditChainAnchored, AuditRecorded, AuditStatus, AuditType
from tenantry_common.ids import derived_id, utcnow
from tenantry_common.messaging import publish_event
from tenantry_common.topics import AUDIT, AUDIT_ANCHORS

from tenantry_audit import service
from tenantry_audit.config import AuditSettings
from tenantry_audit.metrics import AuditMetrics

log = logging.getLogger("tenantry.audit.jobs")


class AnchorPublisher:
    """Publishes chain heads that moved since its last run (each head once per process).

    The watermark overlaps the previous run a little: an append whose transaction committed
    after that run may carry an earlier ``updated_at``, and must not be missed.
    """

    OVERLAP = timedelta(seconds=30)

    def __init__(
        self, *, engine: AsyncEngine, broker: KafkaBroker, metrics: AuditMetrics | None = None
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.metrics = metrics
        self.since: datetime | None = None
        self._published: dict[uuid.UUID, int] = {}

    async def publish(self) -> int:
        """Publish the heads that moved; returns how many were published."""
        started = utcnow()
        count = 0
        async for head in self._moved_heads():
            if self._published.get(head.tenant_id) == head.sequence:
                continue
            await publish_event(
                self.broker,
                AUDIT_ANCHORS,
                AuditChainAnchored(
                    # The same head always gets the same id: consumers may deduplicate on it.
                    event_id=derived_id(
                        head.tenant_id, f"audit-anchor:{head.sequence}:{head.hash}"
                    ),
                    tenant_id=head.tenant_id,
                    sequence=head.sequence,
                    head_hash=head.hash,
                    anchored_at=started,
                ),
            )
            self._published[head.tenant_id] = head.sequence
            count += 1
        if self.metrics is not None:
            self.metrics.anchors.inc(count)
        self.since = started - self.OVERLAP
        return count

    async def _moved_heads(self, page: int = 1000) -> AsyncIterator[service.ChainHead]:
        since = self.since
        while True:
            heads = await service.chain_heads_since(engine=self.engine, since=since, limit=page)
            for head in heads:
                yield head
            if len(heads) < page:
                return
            since = heads[-1].updated_at


def retention_record(result: service.RetentionResult) -> AuditRecorded:
    """The audit record of one tenant's retention (itself appended to that tenant's chain)."""
    refused = result.refused
    return AuditRecorded(
        event_id=derived_id(
            result.tenant_id,
            f"audit-retention:{result.cutoff.isoformat()}:{result.checkpoint_sequence}:{result.removed}",
        ),
        tenant_id=result.tenant_id,
        audit_type=AuditType.RETENTION,
        source="audit",
        actor="audit-retention",
        resource_type="audit_log",
        resource_id=str(result.tenant_id),
        action="delete_expired",
        status=AuditStatus.FAILURE if refused else AuditStatus.SUCCESS,
        error=f"chain broken at {refused.sequence}: {refused.reason}" if refused else None,
        details={
            "cutoff": result.cutoff.isoformat(),
            "expired": result.expired,
            "removed": result.removed,
            "tombstoned": result.tombstoned,
            "checkpoint_sequence": result.checkpoint_sequence,
        },
    )


async def run_retention(
    *,
    engine: AsyncEngine,
    settings: AuditSettings,
    broker: KafkaBroker | None,
    dry_run: bool = False,
    now: datetime | None = None,
    metrics: AuditMetrics | None = None,
) -> service.RetentionRun:
    """Apply retention once and publish an audit record for every tenant it touched."""
    run = await service.apply_retention(
        engine=engine,
        retention_days=settings.retention_days,
        now=now,
        dry_run=dry_run,
        verify_batch_rows=settings.verify_batch_rows,
    )
    for result in run.results:
        if result.refused is not None:
            log.error(
                "retention refused: chain broken",
                extra={"tenant_id": str(result.tenant_id), "sequence": result.refused.sequence},
            )
            if metrics is not None:
                metrics.retention_refused.inc()
        if metrics is not None:
            metrics.retention_removed.inc(result.removed)
        if broker is not None and not dry_run and (result.removed or result.refused):
            await publish_event(broker, AUDIT, retention_record(result))
    return run


async def every(
    interval_s: float,
    job: Callable[[], Awaitable[object]],
    *,
    name: str,
    initial_delay_s: float = 0,
) -> None:
    """Run ``job`` forever, ``interval_s`` apart; a failure is logged and the loop goes on."""
    await asyncio.sleep(initial_delay_s)
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("periodic job failed", extra={"job": name, "error_type": type(exc).__name__})
        await asyncio.sleep(interval_s)
