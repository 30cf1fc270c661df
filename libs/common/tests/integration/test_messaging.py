"""The broker factory against a real broker: round-trip, retries then DLQ, no commit past a
failure, and redelivery after a consumer is killed mid-handler; the same for a windowed
subscriber (many messages of one partition in flight, committed in order); a lingering batch."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream.kafka import KafkaBroker
from messaging_testkit import audit_event
from tenantry_common.batching import lingering
from tenantry_common.events import AuditRecorded
from tenantry_common.inflight import windowed
from tenantry_common.messaging import (
    DLQ_HEADER_ATTEMPTS,
    DLQ_HEADER_ERROR,
    DLQ_HEADER_SOURCE_OFFSET,
    DLQ_HEADER_SOURCE_TOPIC,
    build_broker,
    ensure_topics,
    publish_event,
    stop_broker,
    subscriber_options,
)
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import TopicSpec

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    name = f"test.msg.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(name, 1), TopicSpec(name + ".dlq", 1)])
    return name


@pytest.fixture
def settings(kafka_bootstrap: str) -> CommonSettings:
    return CommonSettings(
        service_name="test",
        kafka_bootstrap_servers=kafka_bootstrap,
        consumer_max_attempts=3,
        consumer_retry_backoff_s=0.01,
    )


async def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset (read as a member-less consumer of the group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def _read_all(bootstrap: str, topic: str, expect: int, timeout: float = 15.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def _wait_committed(
    bootstrap: str, group: str, topic: str, offset: int, timeout: float = 20.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (committed := await _committed(bootstrap, group, topic)) != offset:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"committed {committed}, expected {offset}")
        await asyncio.sleep(0.2)


async def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_handler_round_trip_commits_after_processing(settings, topic) -> None:
    broker = build_broker(settings)
    seen: list[AuditRecorded] = []
    group = f"g-{uuid.uuid4().hex[:6]}"

    @broker.subscriber(topic, **subscriber_options(settings, group))
    async def on_audit(event: AuditRecorded) -> None:
        seen.append(event)

    tenant = uuid.uuid4()
    async with broker:
        await broker.start()
        sent = [audit_event(tenant, i) for i in range(3)]
        for e in sent:
            await publish_event(broker, topic, e)
        await _wait(lambda: len(seen) == 3)
        await asyncio.sleep(0.3)
    assert [e.event_id for e in seen] == [e.event_id for e in sent]
    assert all(e.tenant_id == tenant for e in seen)
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) == 3


async def test_failing_handler_is_retried_then_dead_lettered_and_never_skipped(
    settings, topic
) -> None:
    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    attempts: dict[str, int] = {}
    done: list[str] = []
    release_second = asyncio.Event()

    @broker.subscriber(topic, **subscriber_options(settings, group))
    async def on_audit(event: AuditRecorded) -> None:
        attempts[event.resource_id] = attempts.get(event.resource_id, 0) + 1
        if event.resource_id == "0":
            raise RuntimeError("boom")
        if event.resource_id == "1":
            # While the failing message is being retried, nothing may commit past it.
            await release_second.wait()
        done.append(event.resource_id)

    tenant = uuid.uuid4()
    async with broker:
        await broker.start()
        for i in range(2):
            await publish_event(broker, topic, audit_event(tenant, i))
        await _wait(lambda: attempts.get("1") == 1)
        # The first message failed three times and was dead-lettered before the second ran.
        assert attempts["0"] == 3
        committed_mid = await _committed(settings.kafka_bootstrap_servers, group, topic)
        assert committed_mid == 1, "the dead-lettered message is committed, the in-flight one not"
        release_second.set()
        await _wait(lambda: done == ["1"])
        await asyncio.sleep(0.3)

    dlq = await _read_all(settings.kafka_bootstrap_servers, topic + ".dlq", expect=1)
    assert len(dlq) == 1
    headers = {k: v.decode() for k, v in dlq[0].headers}
    assert headers[DLQ_HEADER_SOURCE_TOPIC] == topic
    assert headers[DLQ_HEADER_SOURCE_OFFSET] == "0"
    assert headers[DLQ_HEADER_ATTEMPTS] == "3"
    assert "RuntimeError: boom" in headers[DLQ_HEADER_ERROR]
    assert dlq[0].key == str(tenant).encode()
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) == 2


async def test_malformed_bytes_go_to_dlq_and_the_consumer_goes_on(settings, topic) -> None:
    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []

    @broker.subscriber(topic, **subscriber_options(settings, group))
    async def on_audit(event: AuditRecorded) -> None:
        seen.append(event.resource_id)

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b"{not json", headers=[("content-type", b"application/json")]
        )
        await producer.send_and_wait(topic, b'{"event_type": "AuditRecorded"}')
        bad_version = audit_event(uuid.uuid4(), 7).model_dump(mode="json") | {"schema_version": 99}
        import json

        await producer.send_and_wait(
            topic, json.dumps(bad_version).encode(), headers=[("content-type", b"application/json")]
        )
    finally:
        await producer.stop()

    async with broker:
        await broker.start()
        await publish_event(broker, topic, audit_event(uuid.uuid4(), 42))
        await _wait(lambda: seen == ["42"])
        await asyncio.sleep(0.3)

    dlq = await _read_all(settings.kafka_bootstrap_servers, topic + ".dlq", expect=3)
    errors = [{k: v.decode() for k, v in r.headers}[DLQ_HEADER_ERROR] for r in dlq]
    assert len(errors) == 3
    assert "unsupported schema_version 99" in errors[2]
    assert dlq[0].value == b"{not json", "the DLQ keeps the original bytes"
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) == 4


async def _slow_consumer_run(
    settings: CommonSettings, topic: str, *, messages: int, window: int = 0
) -> tuple[str, Path, dict[str, str]]:
    """Publish ``messages`` events, then (group, marker dir, environment) for slow_consumer.py."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    marker_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"kill-{uuid.uuid4().hex[:6]}"
    marker_dir.mkdir()
    env = {
        **os.environ,
        "TEST_BOOTSTRAP": settings.kafka_bootstrap_servers,
        "TEST_TOPIC": topic,
        "TEST_GROUP": group,
        "TEST_MARKERS": str(marker_dir),
        "TEST_WINDOW": str(window),
    }
    broker = build_broker(settings)
    async with broker:
        await broker.start()
        for i in range(messages):
            await publish_event(broker, topic, audit_event(uuid.uuid4(), i))
    return group, marker_dir, env


async def _kill_when(env: dict[str, str], ready: Callable[[], bool]) -> None:
    """Run slow_consumer.py in ``hang`` mode and kill -9 it once ``ready()``."""
    first = subprocess.Popen([sys.executable, str(HERE / "slow_consumer.py"), "hang"], env=env)
    try:
        await _wait(ready, timeout=30)
        await asyncio.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()


async def test_consumer_killed_mid_handler_gets_the_message_again(settings, topic) -> None:
    group, marker_dir, env = await _slow_consumer_run(settings, topic, messages=1)
    await _kill_when(env, lambda: (marker_dir / "started").exists())
    assert not (marker_dir / "finished").exists()
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) in (None, -1, 0)

    second = subprocess.Popen([sys.executable, str(HERE / "slow_consumer.py"), "finish"], env=env)
    try:
        await _wait(lambda: (marker_dir / "finished").exists(), timeout=60)
    finally:
        second.terminate()
        second.wait(20)
    assert (marker_dir / "finished").read_text() == "0"
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) == 1


# --------------------------------------------------------------------------- windowed subscribers


@dataclass
class GatedWindow:
    """A windowed subscriber whose handler waits at ``gates[resource_id]`` for each message."""

    broker: KafkaBroker
    group: str
    gates: dict[str, asyncio.Event]
    started: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)


def _gated_window(
    settings: CommonSettings, topic: str, *, messages: int, window: int
) -> GatedWindow:
    broker = build_broker(settings)
    gated = GatedWindow(
        broker, f"g-{uuid.uuid4().hex[:6]}", {str(i): asyncio.Event() for i in range(messages)}
    )
    subscriber = windowed(
        broker.subscriber(topic, **subscriber_options(settings, gated.group)), window=window
    )

    @subscriber
    async def on_audit(event: AuditRecorded) -> None:
        gated.started.append(event.resource_id)
        await gated.gates[event.resource_id].wait()
        gated.done.append(event.resource_id)

    return gated


async def test_window_runs_one_partitions_messages_at_once_and_commits_them_in_order(
    settings, topic
) -> None:
    gated = _gated_window(settings, topic, messages=5, window=8)
    bootstrap = settings.kafka_bootstrap_servers
    async with gated.broker:
        await gated.broker.start()
        for i in range(5):
            await publish_event(gated.broker, topic, audit_event(uuid.uuid4(), i))
        # All five are in flight at once, from the topic's only partition.
        await _wait(lambda: sorted(gated.started) == ["0", "1", "2", "3", "4"])
        for later in ("4", "3", "1"):
            gated.gates[later].set()
        await _wait(lambda: len(gated.done) == 3)
        await asyncio.sleep(0.5)
        assert await _committed(bootstrap, gated.group, topic) in (None, -1, 0), (
            "finished messages behind an unfinished one are not committed"
        )
        gated.gates["0"].set()
        await _wait(lambda: "0" in gated.done)
        await _wait_committed(bootstrap, gated.group, topic, 2)
        gated.gates["2"].set()
        await _wait(lambda: len(gated.done) == 5)
        await _wait_committed(bootstrap, gated.group, topic, 5)


async def test_window_holds_at_most_its_size_in_flight(settings, topic) -> None:
    gated = _gated_window(settings, topic, messages=4, window=2)
    async with gated.broker:
        await gated.broker.start()
        for i in range(4):
            await publish_event(gated.broker, topic, audit_event(uuid.uuid4(), i))
        await _wait(lambda: len(gated.started) == 2)
        await asyncio.sleep(0.5)
        assert gated.started == ["0", "1"], "the third waits for a free place"
        gated.gates["1"].set()
        await _wait(lambda: len(gated.started) == 3)
        for gate in gated.gates.values():
            gate.set()
        await _wait(lambda: len(gated.done) == 4)


async def test_window_dead_letters_a_failing_message_and_commits_past_it_only_then(
    settings, topic
) -> None:
    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    attempts: dict[str, int] = {}
    may_fail = asyncio.Event()
    done: list[str] = []
    subscriber = windowed(broker.subscriber(topic, **subscriber_options(settings, group)), window=8)

    @subscriber
    async def on_audit(event: AuditRecorded) -> None:
        attempts[event.resource_id] = attempts.get(event.resource_id, 0) + 1
        if event.resource_id == "0":
            await may_fail.wait()
            raise RuntimeError("boom")
        done.append(event.resource_id)

    bootstrap = settings.kafka_bootstrap_servers
    async with broker:
        await broker.start()
        for i in range(3):
            await publish_event(broker, topic, audit_event(uuid.uuid4(), i))
        await _wait(lambda: sorted(done) == ["1", "2"])
        await asyncio.sleep(0.5)
        assert await _committed(bootstrap, group, topic) in (None, -1, 0)
        may_fail.set()
        await _wait_committed(bootstrap, group, topic, 3)
    assert attempts["0"] == settings.consumer_max_attempts
    dlq = await _read_all(bootstrap, topic + ".dlq", expect=1)
    assert [{k: v.decode() for k, v in r.headers}[DLQ_HEADER_SOURCE_OFFSET] for r in dlq] == ["0"]


async def test_window_retries_a_message_in_place_through_an_outage(settings, topic) -> None:
    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    outage_left = 2
    attempts: dict[str, int] = {}
    done: list[str] = []
    subscriber = windowed(broker.subscriber(topic, **subscriber_options(settings, group)), window=8)

    @subscriber
    async def on_audit(event: AuditRecorded) -> None:
        nonlocal outage_left
        attempts[event.resource_id] = attempts.get(event.resource_id, 0) + 1
        if event.resource_id == "0" and outage_left:
            outage_left -= 1
            raise ConnectionError("store away")
        done.append(event.resource_id)

    bootstrap = settings.kafka_bootstrap_servers
    async with broker:
        await broker.start()
        for i in range(2):
            await publish_event(broker, topic, audit_event(uuid.uuid4(), i))
        await _wait(lambda: sorted(done) == ["0", "1"], timeout=30)
        await _wait_committed(bootstrap, group, topic, 2)
    assert attempts == {"0": 3, "1": 1}, "retried in place, the other message not again"
    assert await _read_all(bootstrap, topic + ".dlq", expect=1, timeout=2) == []


async def test_window_stop_lets_messages_in_flight_finish_and_commits_them(settings, topic) -> None:
    gated = _gated_window(settings, topic, messages=3, window=8)
    await gated.broker.start()
    try:
        for i in range(3):
            await publish_event(gated.broker, topic, audit_event(uuid.uuid4(), i))
        await _wait(lambda: len(gated.started) == 3)
        stopping = asyncio.create_task(stop_broker(gated.broker, timeout_s=20))
        await asyncio.sleep(0.3)
        assert not stopping.done(), "the stop waits for the messages in flight"
        for gate in gated.gates.values():
            gate.set()
        await asyncio.wait_for(stopping, 30)
    finally:
        await gated.broker.stop()
    assert sorted(gated.done) == ["0", "1", "2"]
    assert await _committed(settings.kafka_bootstrap_servers, gated.group, topic) == 3


async def test_window_killed_mid_message_gets_it_and_what_followed_again(settings, topic) -> None:
    group, marker_dir, env = await _slow_consumer_run(settings, topic, messages=2, window=8)
    # "1" finished while "0", before it, hangs: nothing may be committed.
    await _kill_when(env, lambda: (marker_dir / "finished-1").exists())
    assert not (marker_dir / "finished-0").exists()
    assert await _committed(settings.kafka_bootstrap_servers, group, topic) in (None, -1, 0)

    second = subprocess.Popen([sys.executable, str(HERE / "slow_consumer.py"), "finish"], env=env)
    try:
        await _wait(lambda: (marker_dir / "finished-0").exists(), timeout=60)
        await _wait(lambda: (marker_dir / "finished-1").read_text() == "finish", timeout=30)
        await _wait_committed(settings.kafka_bootstrap_servers, group, topic, 2)
    finally:
        second.terminate()
        second.wait(20)


# --------------------------------------------------------------------------- lingering batches


async def test_a_small_batch_lingers_for_more_records_then_goes_as_it_is(settings, topic) -> None:
    broker = build_broker(settings)
    group = f"g-{uuid.uuid4().hex[:6]}"
    batches: list[list[str]] = []
    options = subscriber_options(settings, group) | {"batch": True, "batch_timeout_ms": 50}
    options.pop("max_workers")
    subscriber = lingering(broker.subscriber(topic, **options), min_records=5, linger_ms=3000)

    @subscriber
    async def on_audits(events: list[AuditRecorded]) -> None:
        batches.append([e.resource_id for e in events])

    tenant = uuid.uuid4()
    async with broker:
        await broker.start()
        await asyncio.sleep(6)  # joined the group (Tansu takes ≈ 5 s)
        for i in range(3):
            await publish_event(broker, topic, audit_event(tenant, i))
        await asyncio.sleep(0.5)
        assert batches == [], "three records wait for two more"
        for i in range(3, 5):
            await publish_event(broker, topic, audit_event(tenant, i))
        await _wait(lambda: len(batches) == 1)
        assert batches == [["0", "1", "2", "3", "4"]], "one batch, in offset order"
        await publish_event(broker, topic, audit_event(tenant, 5))
        await _wait(lambda: len(batches) == 2, timeout=10)  # alone, after the linger
        await _wait_committed(settings.kafka_bootstrap_servers, group, topic, 6)
    assert batches[1] == ["5"]
