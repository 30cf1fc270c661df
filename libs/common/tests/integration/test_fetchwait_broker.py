"""FetchWait on aiokafka's real fetcher against the real broker: an idle consumer sends far fewer
fetch requests, and the next message still arrives and makes its fetches short again; the same
through a windowed FastStream subscriber."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType
from tenantry_common.fetchwait import FetchWait
from tenantry_common.inflight import windowed
from tenantry_common.messaging import (
    build_broker,
    ensure_topics,
    publish_event,
    subscriber_options,
)
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import TopicSpec

pytestmark = pytest.mark.integration

IDLE_AFTER_S = 1.0
IDLE_WAIT_MS = 200


async def test_an_idle_consumer_fetches_less_and_still_gets_the_next_message(
    kafka_bootstrap: str,
) -> None:
    topic = f"test.fetchwait.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=3,
    )
    await consumer.start()
    fetch_waits: list[int] = []
    send = consumer._client.send

    async def counting_send(node_id: int, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):
            fetch_waits.append(request._max_wait_ms)  # the wait this fetch asked the broker for
        return await send(node_id, request, **kwargs)

    consumer._client.send = counting_send
    received: asyncio.Queue[bytes] = asyncio.Queue()
    wait = FetchWait(wait_ms=3, idle_wait_ms=IDLE_WAIT_MS, idle_after_s=IDLE_AFTER_S)

    async def read() -> None:
        while True:
            batch = await consumer.getmany(tp, timeout_ms=100)
            for record in batch.get(tp, []):
                wait.seen()
                received.put_nowait(record.value or b"")

    reader = None
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        wait.attach(consumer)
        reader = asyncio.create_task(read())

        window_s = IDLE_AFTER_S * 0.6
        start = len(fetch_waits)
        await asyncio.sleep(window_s)
        busy_fetches = len(fetch_waits) - start

        await asyncio.sleep(IDLE_AFTER_S * 1.2)
        assert wait.idle
        start = len(fetch_waits)
        await asyncio.sleep(window_s)
        idle_fetches = len(fetch_waits) - start
        assert set(fetch_waits[start:]) == {IDLE_WAIT_MS}
        # Fast: one fetch per ≈ 3 ms plus a round trip; idle: one per 200 ms.
        assert idle_fetches <= window_s * 1000 / IDLE_WAIT_MS + 2
        assert busy_fetches >= 5 * max(idle_fetches, 1), (busy_fetches, idle_fetches)

        sent_at = time.monotonic()
        await producer.send_and_wait(topic, b"after a quiet spell")
        assert await asyncio.wait_for(received.get(), 5) == b"after a quiet spell"
        assert time.monotonic() - sent_at < IDLE_WAIT_MS / 1000 + 1.0
        assert not wait.idle
        start = len(fetch_waits)
        await asyncio.sleep(0.1)
        assert fetch_waits[start:], "it keeps fetching"
        assert set(fetch_waits[start + 1 :]) <= {3}, "with the short wait again"
    finally:
        if reader is not None:
            reader.cancel()
        wait.detach()
        await producer.stop()
        await consumer.stop()


async def test_a_windowed_subscriber_waits_longer_when_idle_and_still_handles_the_next_message(
    kafka_bootstrap: str,
) -> None:
    """As retrieval and inference declare their hot-path subscribers (handlers.py)."""
    topic = f"test.fetchwait.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1), TopicSpec(topic + ".dlq", 1)])
    settings = CommonSettings(
        service_name="test",
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_fetch_max_wait_ms=3,
        kafka_idle_fetch_max_wait_ms=IDLE_WAIT_MS,
        kafka_idle_after_s=0.5,
    )
    broker = build_broker(settings)
    fetch_wait = FetchWait.from_settings(settings)
    subscriber = windowed(
        broker.subscriber(topic, **subscriber_options(settings, f"g-{uuid.uuid4().hex[:6]}")),
        window=4,
        fetch_wait=fetch_wait,
    )
    handled: asyncio.Queue[str] = asyncio.Queue()

    @subscriber
    async def on_audit(event: AuditRecorded) -> None:
        handled.put_nowait(event.resource_id)

    async with broker:
        await broker.start()
        fetcher = subscriber.consumer._fetcher  # type: ignore[union-attr]
        assert fetcher._fetch_max_wait_ms == 3
        await asyncio.sleep(1.2)
        assert fetch_wait.idle
        assert fetcher._fetch_max_wait_ms == IDLE_WAIT_MS
        await publish_event(broker, topic, _event())
        assert await asyncio.wait_for(handled.get(), 5) == "poke-me"
        assert not fetch_wait.idle
        assert fetcher._fetch_max_wait_ms == 3
    assert fetch_wait._task is None, "stopping the subscriber stops following its consumer"


def _event() -> AuditRecorded:
    return AuditRecorded(
        tenant_id=uuid.uuid4(),
        audit_type=AuditType.API_CALL,
        source="test",
        resource_type="thing",
        resource_id="poke-me",
        action="poke",
        status=AuditStatus.SUCCESS,
    )
