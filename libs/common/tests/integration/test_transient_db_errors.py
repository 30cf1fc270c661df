"""Postgres's "run the transaction again" errors, raised for real through SQLAlchemy and asyncpg:
they count as transient, so a batch that loses a deadlock is retried whole, never bisected
into the dead-letter topic; an error of the data itself is still not transient."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from messaging_testkit import audit_event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenantry_common.events import AuditRecorded
from tenantry_common.messaging import (
    RETRYABLE_SQLSTATES,
    build_broker,
    ensure_topics,
    is_transient,
    subscriber_options,
)
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import TopicSpec

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(make_database: Callable[[str], Awaitable[str]]) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(await make_database("races"))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE row_pair (id int PRIMARY KEY, v int NOT NULL)"))
        await conn.execute(text("INSERT INTO row_pair VALUES (1, 0), (2, 0)"))
    yield engine
    await engine.dispose()


async def _wait_for_lock_wait(engine: AsyncEngine) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with engine.connect() as conn:  # a fresh snapshot each time
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the first transaction never waited for the lock")


async def _deadlock(engine: AsyncEngine) -> DBAPIError:
    """Two transactions lock the two rows in opposite orders; Postgres aborts one of them."""
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await second.begin()
        await first.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 1"))
        await second.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 2"))
        waiting = asyncio.create_task(
            first.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 2"))
        )
        await _wait_for_lock_wait(engine)
        crossing = asyncio.create_task(
            second.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 1"))
        )
        results = await asyncio.gather(waiting, crossing, return_exceptions=True)
        await first.rollback()
        await second.rollback()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results
    assert isinstance(errors[0], DBAPIError), results
    return errors[0]


async def _serialization_failure(engine: AsyncEngine) -> DBAPIError:
    """A repeatable-read transaction updates a row another committed after its snapshot."""
    async with engine.connect() as reader, engine.connect() as writer:
        await reader.execution_options(isolation_level="REPEATABLE READ")
        await reader.begin()
        await reader.execute(text("SELECT v FROM row_pair WHERE id = 1"))  # takes the snapshot
        async with writer.begin():
            await writer.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 1"))
        with pytest.raises(DBAPIError) as caught:
            await reader.execute(text("UPDATE row_pair SET v = v + 1 WHERE id = 1"))
        await reader.rollback()
    return caught.value


def _sqlstates(error: BaseException) -> set[str]:
    states = set()
    cause: BaseException | None = error
    while cause is not None:
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str):
            states.add(state)
        cause = cause.__cause__ or cause.__context__
    return states


async def test_a_real_deadlock_is_transient(engine: AsyncEngine) -> None:
    error = await _deadlock(engine)
    assert "40P01" in _sqlstates(error), error
    assert is_transient(error)


async def test_a_real_serialization_failure_is_transient(engine: AsyncEngine) -> None:
    error = await _serialization_failure(engine)
    assert "40001" in _sqlstates(error), error
    assert is_transient(error)


async def test_a_unique_violation_is_not_transient(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(IntegrityError) as caught:
            await conn.execute(text("INSERT INTO row_pair VALUES (1, 0)"))
    assert not _sqlstates(caught.value) & RETRYABLE_SQLSTATES
    assert not is_transient(caught.value)


async def test_a_batch_that_keeps_losing_deadlocks_is_retried_whole_and_never_dead_lettered(
    kafka_bootstrap: str, engine: AsyncEngine
) -> None:
    deadlock = await _deadlock(engine)
    topic = f"test.races.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1), TopicSpec(topic + ".dlq", 1)])
    # Quick handler retries: were a deadlock a fault of the records, the batch would be
    # bisected and each record would use up its 3 attempts well inside the 2.5 s of deadlocks.
    settings = CommonSettings(
        service_name="test",
        kafka_bootstrap_servers=kafka_bootstrap,
        consumer_max_attempts=3,
        consumer_retry_backoff_s=0.01,
    )
    tenant = uuid.uuid4()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(
                topic, audit_event(tenant, i).model_dump_json().encode(), key=str(tenant).encode()
            )
    finally:
        await producer.stop()

    broker = build_broker(settings)
    options = subscriber_options(settings, f"g-{uuid.uuid4().hex[:6]}")
    options.pop("max_workers")
    handled: list[str] = []
    calls: list[int] = []
    first_call: list[float] = []

    @broker.subscriber(topic, batch=True, max_records=50, batch_timeout_ms=500, **options)
    async def on_audits(events: list[AuditRecorded]) -> None:
        calls.append(len(events))
        if not first_call:
            first_call.append(time.monotonic())
        if time.monotonic() - first_call[0] < 2.5:
            raise deadlock  # the store keeps losing the race for a while
        handled.extend(e.resource_id for e in events)

    async with broker:
        await broker.start()
        deadline = time.monotonic() + 30
        while len(handled) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    assert sorted(handled, key=int) == [str(i) for i in range(10)], "each record handled once"
    assert len(calls) >= 3, "the deadlocks were retried"
    dlq = AIOKafkaConsumer(
        topic + ".dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await dlq.start()
    try:
        got = await dlq.getmany(timeout_ms=2000)
    finally:
        await dlq.stop()
    assert [r for rs in got.values() for r in rs] == [], "nothing dead-lettered"
