"""Batch subscribers through the reliable-consumer middleware: a failing batch is bisected so
only the bad records are dead-lettered, good ones are handled, offsets committed per partition."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from messaging_testkit import audit_event
from tenantry_common.events import AuditRecorded
from tenantry_common.messaging import (
    DLQ_HEADER_ATTEMPTS,
    DLQ_HEADER_ERROR,
    DLQ_HEADER_SOURCE_OFFSET,
    PermanentError,
    build_broker,
    ensure_topics,
    subscriber_options,
)
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import TopicSpec

pytestmark = pytest.mark.integration


async def test_batch_with_bad_records_dead_letters_only_them_and_commits_past_all(
    kafka_bootstrap: str,
) -> None:
    topic = f"test.batch.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2), TopicSpec(topic + ".dlq", 1)])
    settings = CommonSettings(
        service_name="test", kafka_bootstrap_servers=kafka_bootstrap, consumer_retry_backoff_s=0.01
    )
    tenant = uuid.uuid4()
    # 20 records over 2 partitions; "bad" fails permanently, "{" cannot be parsed at all.
    values = [
        audit_event(tenant, i, "bad" if i in (3, 11) else None).model_dump_json().encode()
        for i in range(20)
    ]
    values[7] = b"{"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=str(tenant).encode(), partition=i % 2)
    finally:
        await producer.stop()

    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    handled: list[str] = []
    calls: list[int] = []
    options = subscriber_options(settings, group)
    options.pop("max_workers")

    @broker.subscriber(topic, batch=True, max_records=50, batch_timeout_ms=500, **options)
    async def on_audits(events: list[AuditRecorded]) -> None:
        calls.append(len(events))
        if any(e.resource_id == "bad" for e in events):
            raise PermanentError("bad record")
        handled.extend(e.resource_id for e in events)

    async with broker:
        await broker.start()
        deadline = asyncio.get_running_loop().time() + 30
        while len(handled) < 17 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    assert sorted(handled, key=int) == [str(i) for i in range(20) if i not in (3, 7, 11)]
    assert len(handled) == 17, "each good record handled once"
    dlq = AIOKafkaConsumer(
        topic + ".dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await dlq.start()
    try:
        got = await dlq.getmany(timeout_ms=3000)
        records = [r for rs in got.values() for r in rs]
    finally:
        await dlq.stop()
    headers = [{k: v.decode() for k, v in r.headers} for r in records]
    assert sorted(r.value for r in records) == sorted([values[3], values[7], values[11]])
    assert all(h[DLQ_HEADER_ATTEMPTS] == "1" for h in headers), "message faults: no retries"
    assert any("bad record" in h[DLQ_HEADER_ERROR] for h in headers)
    assert {h[DLQ_HEADER_SOURCE_OFFSET] for h in headers} == {"1", "3", "5"}
    committed = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await committed.start()
    try:
        offsets = [await committed.committed(TopicPartition(topic, p)) for p in (0, 1)]
    finally:
        await committed.stop()
    assert offsets == [10, 10]
