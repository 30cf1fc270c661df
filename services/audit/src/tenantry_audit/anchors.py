"""Reading published chain heads back: one tenant's ``AuditChainAnchored`` from the anchors topic.

An adapter (Kafka in, plain ``Anchor`` values out) for verify: the topic, or a copy of it kept
where the database's administrators cannot write, is the evidence a rewrite of a whole chain
tail cannot forge.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from tenantry_common.events import AuditChainAnchored

from tenantry_audit.chain import Anchor
from tenantry_audit.config import AuditSettings

log = logging.getLogger("tenantry.audit.anchors")


class AnchorsUnavailable(Exception):
    """The anchors topic could not be read completely (verify against anchors cannot answer)."""


async def read_anchors(
    *, bootstrap_servers: str, topic: str, tenant_id: uuid.UUID, timeout_s: float = 30.0
) -> list[Anchor]:
    """Every anchor published for ``tenant_id``, read from the beginning to the current end."""
    try:
        return await asyncio.wait_for(
            _read(bootstrap_servers=bootstrap_servers, topic=topic, tenant_id=tenant_id),
            timeout_s,
        )
    except AnchorsUnavailable:
        raise
    except Exception as exc:  # broker away, timeout, metadata errors: all "cannot answer"
        raise AnchorsUnavailable(f"cannot read {topic}: {type(exc).__name__}") from exc


async def anchors_for(*, settings: AuditSettings, tenant_id: uuid.UUID) -> list[Anchor]:
    """The tenant's published anchors, from the broker and topic the settings name."""
    return await read_anchors(
        bootstrap_servers=settings.anchors_bootstrap_servers or settings.kafka_bootstrap_servers,
        topic=settings.anchors_topic,
        tenant_id=tenant_id,
        timeout_s=settings.anchors_read_timeout_s,
    )


async def _read(*, bootstrap_servers: str, topic: str, tenant_id: uuid.UUID) -> list[Anchor]:
    # No consumer group: a read-only pass that commits nothing and disturbs no one.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"audit-verify-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise AnchorsUnavailable(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Read up to the end as it is now: anchors published later cover heads the chain's
        # snapshot (taken after this read) may not hold yet.
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        key = str(tenant_id).encode()
        found: list[Anchor] = []
        skipped = 0
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] or record.key != key or record.value is None:
                        continue
                    try:
                        anchor = AuditChainAnchored.model_validate_json(record.value)
                    except ValidationError:
                        skipped += 1
                        continue
                    if anchor.tenant_id == tenant_id:
                        found.append(Anchor(sequence=anchor.sequence, head_hash=anchor.head_hash))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if skipped:
            log.warning("unreadable anchor records skipped", extra={"count": skipped})
        return found
    finally:
        await consumer.stop()
