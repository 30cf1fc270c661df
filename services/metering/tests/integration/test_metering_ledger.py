"""The ledger against the real broker, Postgres and Redis: exactly once per event id, replays,
conflicting payloads dead-lettered, rollups for analysts, and the lifecycle acknowledgements."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker
from metering_testkit import ledger_count, read_topic, running, usage, wait_until
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.budget import BudgetStore
from tenantry_common.db import create_engine
from tenantry_common.events import (
    LifecycleAction,
    TenantOffboarded,
    TenantProvisioned,
    UsageRolledUp,
    parse_event,
)
from tenantry_common.messaging import (
    DLQ_HEADER_ERROR,
    DLQ_HEADER_GROUP,
    publish_event,
)
from tenantry_common.settings import LOCAL_MODEL, default_catalogue
from tenantry_common.topics import TENANTS_LIFECYCLE, USAGE, USAGE_DAILY
from tenantry_metering import repository
from tenantry_metering.config import Settings
from tenantry_metering.runtime import ROLLUP_PUBLISH_CHUNK

pytestmark = pytest.mark.integration

PRICE = default_catalogue()[LOCAL_MODEL]


async def test_duplicate_and_out_of_order_deliveries_count_once(
    metering_settings: Settings,
    engine: AsyncEngine,
    producer: KafkaBroker,
    redis_client: Redis,
) -> None:
    tenant = uuid.uuid4()
    now = datetime.now(UTC).replace(hour=12)
    # Occurred-at times shuffled against publication order; every event published 1 to 3 times,
    # redeliveries interleaved with later events; every other one names an end user (version 2).
    events = [
        usage(
            tenant,
            prompt=10 + i,
            completion=5 + i,
            occurred_at=now - timedelta(minutes=i),
            end_user=f"user-{i % 3}" if i % 2 else None,
        )
        for i in range(40)
    ]
    assert {e.schema_version for e in events} == {1, 2}
    deliveries = [e for e in events for _ in range(random.randint(1, 3))]
    random.Random(7).shuffle(deliveries)
    async with running(metering_settings) as (app, _client):
        for event in deliveries:
            await publish_event(producer, USAGE, event)

        async def all_recorded() -> bool:
            return await ledger_count(engine, tenant) == len(events)

        await wait_until(all_recorded, what="every event in the ledger")
        # Let any remaining redeliveries be consumed too before checking nothing doubled.
        for event in events[:5]:
            await publish_event(producer, USAGE, event)
        await wait_until(
            lambda: _duplicates_seen(app, len(deliveries) + 5 - len(events)), what="duplicates"
        )

    prompt = sum(e.prompt_tokens for e in events)
    completion = sum(e.completion_tokens for e in events)
    cost = sum(PRICE.cost_micros(e.prompt_tokens, e.completion_tokens) for e in events)
    async with engine.connect() as conn:
        totals = await repository.ledger_totals(conn, tenant_id=tenant)
        daily = await repository.daily_rows(
            conn, tenant_id=tenant, start=now.date(), end=now.date()
        )
        monthly = await repository.monthly_rows(
            conn, tenant_id=tenant, start=now.date().replace(day=1), end=now.date().replace(day=1)
        )
    assert (totals.events, totals.prompt_tokens, totals.completion_tokens, totals.cost_micros) == (
        40,
        prompt,
        completion,
        cost,
    )
    assert [(r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micros) for r in daily] == [
        (40, prompt, completion, cost)
    ]
    assert [(r.requests, r.cost_micros) for r in monthly] == [(40, cost)]
    # Settled in Redis once per event, whatever the number of deliveries.
    snapshot = await BudgetStore(redis_client).snapshot(tenant_id=tenant, day=now.date())
    assert snapshot.tokens_used == prompt + completion
    assert snapshot.spend_used_micros == cost


async def _duplicates_seen(app, expected: int) -> bool:
    metrics = app.state.runtime.metrics
    return metrics.events.labels("duplicate")._value.get() >= expected


async def test_replay_of_the_whole_topic_into_an_empty_ledger_gives_identical_totals(
    metering_settings: Settings,
    engine: AsyncEngine,
    producer: KafkaBroker,
    make_database,
) -> None:
    tenants = [uuid.uuid4() for _ in range(3)]
    base = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)  # spans a day and a month boundary
    events = [
        usage(
            tenants[i % 3],
            prompt=7 * i,
            completion=3 * i,
            occurred_at=base + timedelta(minutes=11 * i),
            model=LOCAL_MODEL if i % 4 else "gpt-4o-mini",
        )
        for i in range(60)
    ]
    async with running(metering_settings):
        for event in events + events[::7]:
            await publish_event(producer, USAGE, event)

        async def recorded() -> bool:
            counts = [await ledger_count(engine, t) for t in tenants]
            return sum(counts) == len(events)

        await wait_until(recorded, what="first ledger filled")
    first = await _snapshot(engine, tenants)

    replay_settings = metering_settings.model_copy(
        update={
            "postgres_dsn": await make_database("metering_replay"),
            "usage_group_id": f"metering.usage.replay-{uuid.uuid4().hex[:8]}",
        }
    )
    replay_engine = create_engine(replay_settings.postgres_dsn, pool_size=2)
    try:
        async with running(replay_settings):

            async def replayed() -> bool:
                counts = [await ledger_count(replay_engine, t) for t in tenants]
                return sum(counts) == len(events)

            await wait_until(replayed, what="replayed ledger filled")
        second = await _snapshot(replay_engine, tenants)
    finally:
        await replay_engine.dispose()
    assert second == first
    assert sum(t[0] for t, _, _ in first.values()) == 60


async def _snapshot(engine: AsyncEngine, tenants: list[uuid.UUID]) -> dict:
    out = {}
    async with engine.connect() as conn:
        for tenant in tenants:
            totals = await repository.ledger_totals(conn, tenant_id=tenant)
            daily = await repository.daily_rows(
                conn,
                tenant_id=tenant,
                start=datetime(2025, 3, 1).date(),
                end=datetime(2025, 4, 30).date(),
            )
            monthly = await repository.monthly_rows(
                conn,
                tenant_id=tenant,
                start=datetime(2025, 3, 1).date(),
                end=datetime(2025, 4, 1).date(),
            )
            out[tenant] = (
                (totals.events, totals.prompt_tokens, totals.completion_tokens, totals.cost_micros),
                [(r.period, r.model, r.requests, r.total_tokens, r.cost_micros) for r in daily],
                [(r.period, r.model, r.requests, r.total_tokens, r.cost_micros) for r in monthly],
            )
    return out


async def test_same_event_id_with_a_different_payload_is_dead_lettered(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker
) -> None:
    tenant = uuid.uuid4()
    original = usage(tenant, prompt=100, completion=10)
    forged = original.model_copy(update={"completion_tokens": 9_999})
    after = usage(tenant, prompt=1, completion=1)
    async with running(metering_settings):
        await publish_event(producer, USAGE, original)
        await wait_until(lambda: _count_is(engine, tenant, 1), what="original recorded")
        await publish_event(producer, USAGE, forged)
        await publish_event(producer, USAGE, after)
        await wait_until(lambda: _count_is(engine, tenant, 2), what="later event recorded")

        async def dead_lettered() -> bool:
            return len(await _dlq_for(metering_settings, original.event_id)) == 1

        await wait_until(dead_lettered, what="conflict dead-lettered")

    async with engine.connect() as conn:
        totals = await repository.ledger_totals(conn, tenant_id=tenant)
    assert totals.completion_tokens == 11, "the ledger keeps the first payload only"
    (record,) = await _dlq_for(metering_settings, original.event_id)
    headers = {k: v.decode() for k, v in record.headers}
    assert "different payload" in headers[DLQ_HEADER_ERROR]
    assert parse_event(record.value).completion_tokens == 9_999


async def _count_is(engine: AsyncEngine, tenant: uuid.UUID, n: int) -> bool:
    return await ledger_count(engine, tenant) == n


async def _dlq_for(settings: Settings, event_id: uuid.UUID) -> list:
    records = await read_topic(settings.kafka_bootstrap_servers, USAGE.dlq, idle_s=0.5)
    return [
        r
        for r in records
        if str(event_id).encode() in r.value
        and dict(r.headers).get(DLQ_HEADER_GROUP, b"").decode() == settings.usage_group_id
    ]


async def test_daily_rollups_are_published_for_analysts(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker
) -> None:
    tenant = uuid.uuid4()
    day = datetime(2025, 6, 2, 10, tzinfo=UTC)
    events = [usage(tenant, prompt=10, completion=i, occurred_at=day) for i in range(5)]
    async with running(metering_settings):
        for event in events:
            await publish_event(producer, USAGE, event)
        await wait_until(lambda: _count_is(engine, tenant, 5), what="recorded")

        async def rolled_up() -> bool:
            rollups = await _rollups(metering_settings, tenant)
            return bool(rollups) and rollups[-1].requests == 5

        await wait_until(rolled_up, what="rollup published")
    latest = (await _rollups(metering_settings, tenant))[-1]
    assert (latest.day, latest.model, latest.prompt_tokens, latest.completion_tokens) == (
        day.date(),
        LOCAL_MODEL,
        50,
        10,
    )
    assert latest.cost_micros == sum(PRICE.cost_micros(10, i) for i in range(5))


async def test_a_flush_of_more_rows_than_one_chunk_publishes_every_row(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker
) -> None:
    tenants = [uuid.uuid4() for _ in range(ROLLUP_PUBLISH_CHUNK + 100)]
    day = datetime(2025, 6, 3, 10, tzinfo=UTC)
    async with running(metering_settings):
        for tenant in tenants:
            await publish_event(producer, USAGE, usage(tenant, prompt=7, occurred_at=day))

        async def every_tenant_rolled_up() -> bool:
            records = await read_topic(
                metering_settings.kafka_bootstrap_servers, USAGE_DAILY.name, idle_s=0.5
            )
            wanted = {str(t) for t in tenants}
            return wanted <= {r.key.decode()[:36] for r in records}

        await wait_until(every_tenant_rolled_up, timeout=60, what="every tenant's rollup")
    wanted = {str(t) for t in tenants}
    records = await read_topic(metering_settings.kafka_bootstrap_servers, USAGE_DAILY.name)
    rollups = [parse_event(r.value) for r in records if r.key.decode()[:36] in wanted]
    assert all(isinstance(e, UsageRolledUp) for e in rollups)
    assert {(str(e.tenant_id), e.day, e.requests, e.prompt_tokens) for e in rollups} == {
        (t, day.date(), 1, 7) for t in wanted
    }


async def _rollups(settings: Settings, tenant: uuid.UUID) -> list[UsageRolledUp]:
    records = await read_topic(settings.kafka_bootstrap_servers, USAGE_DAILY.name, idle_s=0.5)
    found = []
    for r in records:
        if r.key.decode().startswith(str(tenant)):
            event = parse_event(r.value)
            assert isinstance(event, UsageRolledUp)
            found.append(event)
    return found


async def test_lifecycle_is_acknowledged_and_offboarding_keeps_the_ledger(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker
) -> None:
    from metering_testkit import config_changed

    tenant = uuid.uuid4()
    config = config_changed(tenant, daily_tokens=1000, monthly_micros=10**6).config
    async with running(metering_settings) as (app, _):
        await publish_event(
            producer,
            TENANTS_LIFECYCLE,
            TenantProvisioned(
                tenant_id=tenant, tenant_name="t", tier=config.tier, config_version=1, config=config
            ),
        )
        await publish_event(producer, USAGE, usage(tenant))
        await wait_until(lambda: _count_is(engine, tenant, 1), what="recorded")
        await publish_event(
            producer, TENANTS_LIFECYCLE, TenantOffboarded(tenant_id=tenant, tenant_name="t")
        )

        async def acked() -> bool:
            return len(await _acks(metering_settings, tenant)) == 2

        await wait_until(acked, what="both acknowledgements")
        assert app.state.runtime.directory.budgets_of(tenant) is None
    acks = await _acks(metering_settings, tenant)
    assert sorted(a.action for a in acks) == [
        LifecycleAction.OFFBOARDED,
        LifecycleAction.PROVISIONED,
    ]
    assert all(a.service == "metering" and a.succeeded for a in acks)
    assert await ledger_count(engine, tenant) == 1, "billing records are kept"


async def _acks(settings: Settings, tenant: uuid.UUID) -> list:
    records = await read_topic(settings.kafka_bootstrap_servers, TENANTS_LIFECYCLE.name, idle_s=0.5)
    events = [parse_event(r.value) for r in records if r.key == str(tenant).encode()]
    return [e for e in events if e.event_type == "TenantLifecycleAcknowledged"]
