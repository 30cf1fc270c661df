"""The service broker starts its subscribers together: the groups' joins overlap, so three
groups start in about the time of one (on Tansu a join waits ≈ 5 s; FastStream's own start
takes them one after another, ≈ 15 s)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from faststream.kafka import KafkaBroker
from messaging_testkit import audit_event
from tenantry_common.events import AuditRecorded
from tenantry_common.messaging import (
    build_broker,
    ensure_topics,
    publish_event,
    stop_broker,
    subscriber_options,
)
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import TopicSpec

pytestmark = pytest.mark.integration


def _subscribe(
    broker: KafkaBroker, settings: CommonSettings, topic: str, group: str, seen: list[str]
) -> None:
    @broker.subscriber(topic, **subscriber_options(settings, group))  # type: ignore[untyped-decorator]
    async def on_audit_recorded(event: AuditRecorded) -> None:
        seen.append(group)


async def _timed_start(broker: KafkaBroker) -> float:
    started = time.monotonic()
    await broker.start()
    return time.monotonic() - started


async def test_three_consumer_groups_start_in_about_the_time_of_one_and_each_consumes(
    kafka_bootstrap: str,
) -> None:
    topic = f"test.start.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1), TopicSpec(topic + ".dlq", 1)])
    settings = CommonSettings(service_name="test", kafka_bootstrap_servers=kafka_bootstrap)
    seen: list[str] = []

    alone = build_broker(settings)
    _subscribe(alone, settings, topic, f"start-alone-{uuid.uuid4().hex[:6]}", seen)
    try:
        one_group_s = await _timed_start(alone)
    finally:
        await stop_broker(alone, timeout_s=10)

    broker = build_broker(settings)
    groups = [f"start-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for group in groups:
        _subscribe(broker, settings, topic, group, seen)
    try:
        three_groups_s = await _timed_start(broker)
        assert broker.running
        await publish_event(broker, topic, audit_event(uuid.uuid4(), 0))
        async with asyncio.timeout(20):
            while sorted(seen) != sorted(groups):
                await asyncio.sleep(0.05)
    finally:
        await stop_broker(broker, timeout_s=10)

    if one_group_s < 1.0:  # e.g. Apache Kafka with group.initial.rebalance.delay.ms=0
        pytest.skip(f"this broker lets a group join in {one_group_s:.2f}s: no wait to overlap")
    # One after another, three joins would take about three times one.
    assert three_groups_s < 2 * one_group_s, (
        f"three groups took {three_groups_s:.2f}s to start against {one_group_s:.2f}s for one"
    )
