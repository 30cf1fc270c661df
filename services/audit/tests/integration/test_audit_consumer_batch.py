"""The ``audit.v1`` batch subscriber against the real broker and Postgres: a batch holding a
duplicate and malformed records stores each good event once, in topic order, dead-letters only
the bad records, and commits past all of them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from audit_testkit import make_event, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import service
from tenantry_audit.config import AuditSettings
from tenantry_audit.handlers import RECORDS_GROUP, register_handlers
from tenantry_audit.metrics import AuditMetrics
from tenantry_common.messaging import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_GROUP, build_broker
from tenantry_common.topics import AUDIT, DLQ_SUFFIX

pytestmark = pytest.mark.integration


async def _dead_letters(bootstrap: str, key: bytes, expect: int) -> list[tuple[bytes, dict]]:
    consumer = AIOKafkaConsumer(
        AUDIT.name + DLQ_SUFFIX, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[tuple[bytes, dict]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while len(found) < expect and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                found += [
                    (r.value, {k: v.decode() for k, v in r.headers})
                    for r in records
                    if r.key == key
                ]
    finally:
        await consumer.stop()
    return found


async def test_a_batch_with_a_duplicate_and_malformed_records_stores_each_good_event_once(
    audit_settings: AuditSettings, writer_engine: AsyncEngine
) -> None:
    tenant = uuid.uuid4()
    key = str(tenant).encode()
    good = [make_event(tenant, i) for i in range(6)]
    unparseable = b'{"event_type": "AuditRecorded", "tenant_id"'
    invalid = make_event(tenant, 99).model_dump_json(exclude={"resource_type"}).encode()
    values = [
        good[0].model_dump_json().encode(),
        good[1].model_dump_json().encode(),
        unparseable,
        good[2].model_dump_json().encode(),
        good[1].model_dump_json().encode(),  # a redelivery inside the same batch
        good[3].model_dump_json().encode(),
        invalid,
        good[4].model_dump_json().encode(),
        good[5].model_dump_json().encode(),
    ]
    # Everything is on the topic (one partition: one tenant key) before the consumer starts,
    # so it arrives as one batch.
    producer = AIOKafkaProducer(bootstrap_servers=audit_settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(AUDIT.name, v, key=key) for v in values]
    finally:
        await producer.stop()
    partition = sent[0].partition
    assert {m.partition for m in sent} == {partition}

    settings = audit_settings.model_copy(update={"records_batch_max_records": 10_000})
    registry = CollectorRegistry()
    broker = build_broker(settings, registry=registry, client_id="test-audit-batch")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    register_handlers(
        broker,
        settings=settings,
        engine=writer_engine,
        metrics=AuditMetrics(registry),
        group_prefix=prefix,
    )

    async def stored() -> bool:
        report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
        return report.head_sequence == len(good)

    async with broker:
        await broker.start()
        await wait_for(stored, timeout_s=60)
        dead = await _dead_letters(settings.kafka_bootstrap_servers, key, expect=2)
        await asyncio.sleep(1)  # anything else the consumer would (wrongly) do, it does now

    async with writer_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT sequence, event_id FROM audit_records WHERE tenant_id = :t "
                    "ORDER BY sequence"
                ),
                {"t": tenant},
            )
        ).all()
    # Each good event once, in the order the topic holds them: the chain follows the partition.
    assert [r.event_id for r in rows] == [e.event_id for e in good]
    assert [r.sequence for r in rows] == [1, 2, 3, 4, 5, 6]
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.head_sequence == 6

    assert sorted(value for value, _ in dead) == sorted([unparseable, invalid])
    assert all(h[DLQ_HEADER_GROUP] == prefix + RECORDS_GROUP for _, h in dead)
    assert {h[DLQ_HEADER_ERROR_TYPE] for _, h in dead} <= {"JSONDecodeError", "ValidationError"}
    # It was one batch, halved until the bad records stood alone; the duplicate was skipped.
    bisections = registry.get_sample_value(
        "tenantry_message_retries_total", {"topic": AUDIT.name, "kind": "bisect"}
    )
    assert bisections is not None
    assert bisections >= 1
    duplicates = registry.get_sample_value("tenantry_audit_duplicates_total")
    assert duplicates is not None
    assert duplicates >= 1

    committed = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=prefix + RECORDS_GROUP
    )
    await committed.start()
    try:
        offset = await committed.committed(TopicPartition(AUDIT.name, partition))
    finally:
        await committed.stop()
    assert offset is not None
    assert offset >= sent[-1].offset + 1, "committed past the whole batch, bad records included"
