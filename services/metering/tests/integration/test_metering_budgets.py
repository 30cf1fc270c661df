"""Budgets against the real broker, Postgres and Redis: threshold events once per period,
bounded overshoot under 50 concurrent reservations, and zero drift (also after a Redis restart)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from datetime import UTC, datetime

import pytest
from faststream.kafka import KafkaBroker
from metering_testkit import config_changed, ledger_count, read_topic, running, usage, wait_until
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.budget import BudgetStore
from tenantry_common.events import (
    AuditRecorded,
    BudgetExhausted,
    BudgetThresholdCrossed,
    parse_event,
)
from tenantry_common.localstack import free_port, port_open, wait_for
from tenantry_common.messaging import publish_event
from tenantry_common.redis import create_redis
from tenantry_common.topics import AUDIT, BUDGETS, TENANTS_CONFIG, USAGE
from tenantry_metering import repository
from tenantry_metering.config import Settings

pytestmark = pytest.mark.integration


async def _budget_events(settings: Settings, tenant: uuid.UUID) -> list:
    records = await read_topic(settings.kafka_bootstrap_servers, BUDGETS.name, idle_s=0.7)
    return [parse_event(r.value) for r in records if r.key == str(tenant).encode()]


async def test_threshold_and_exhaustion_events_are_emitted_once_per_period(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker
) -> None:
    tenant = uuid.uuid4()
    day1 = datetime(2025, 5, 31, 9, tzinfo=UTC)
    day2 = datetime(2025, 6, 1, 9, tzinfo=UTC)
    async with running(metering_settings) as (app, _):
        await publish_event(
            producer,
            TENANTS_CONFIG,
            config_changed(tenant, daily_tokens=1000, monthly_micros=10**9),
        )
        await wait_until(lambda: _has_config(app, tenant), what="config known")
        # Day 1: 50 %, then 85 % (crosses 80), then 105 % (exhausted), then more (nothing new).
        day1_events = [
            usage(tenant, prompt=total, completion=0, occurred_at=day1)
            for total in (500, 350, 200, 100, 100)
        ]
        for n, event in enumerate(day1_events, start=1):
            await publish_event(producer, USAGE, event)
            await wait_until(lambda n=n: _count_is(engine, tenant, n), what="recorded")
        # Redeliveries of the same events change nothing.
        for event in day1_events:
            await publish_event(producer, USAGE, event)
        # Day 2 is a new period: crossing 80 % there is a new event.
        await publish_event(
            producer, USAGE, usage(tenant, prompt=900, completion=0, occurred_at=day2)
        )
        await wait_until(lambda: _count_is(engine, tenant, 6), what="day 2 recorded")

        async def three_events() -> bool:
            return len(await _budget_events(metering_settings, tenant)) >= 3

        await wait_until(three_events, what="budget events")
        await asyncio.sleep(1.0)
    events = await _budget_events(metering_settings, tenant)
    summary = sorted(
        (type(e).__name__, e.period, getattr(e, "threshold_percent", 100)) for e in events
    )
    assert summary == [
        ("BudgetExhausted", "2025-05-31", 100),
        ("BudgetThresholdCrossed", "2025-05-31", 80),
        ("BudgetThresholdCrossed", "2025-06-01", 80),
    ]
    crossed = next(e for e in events if isinstance(e, BudgetThresholdCrossed))
    assert (crossed.used, crossed.limit) == (850, 1000)
    exhausted = next(e for e in events if isinstance(e, BudgetExhausted))
    assert exhausted.used == 1050
    audits = [
        parse_event(r.value)
        for r in await read_topic(metering_settings.kafka_bootstrap_servers, AUDIT.name, idle_s=0.7)
        if r.key == str(tenant).encode()
    ]
    budget_audits = [a for a in audits if isinstance(a, AuditRecorded) and a.audit_type == "budget"]
    assert len(budget_audits) == 3


async def _has_config(app, tenant: uuid.UUID) -> bool:
    return app.state.runtime.directory.budgets_of(tenant) is not None


async def _count_is(engine: AsyncEngine, tenant: uuid.UUID, n: int) -> bool:
    return await ledger_count(engine, tenant) == n


async def test_fifty_concurrent_reservations_overshoot_by_at_most_in_flight_max_tokens(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker, redis_url: str
) -> None:
    tenant = uuid.uuid4()
    today = datetime.now(UTC)
    limit, max_tokens = 10_000, 300
    async with running(metering_settings):
        # Nearly exhausted: 9,100 tokens already used (recorded and settled by metering).
        await publish_event(
            producer, USAGE, usage(tenant, prompt=9_100, completion=0, occurred_at=today)
        )
        await wait_until(lambda: _count_is(engine, tenant, 1), what="prior usage")
        # 50 requests at once, each reserving its worst case on its own connection (as edge
        # replicas do), then using all of it (the worst case) and being settled by metering.
        clients = [create_redis(redis_url) for _ in range(50)]
        requests = [uuid.uuid4() for _ in range(50)]
        try:
            results = await asyncio.gather(
                *(
                    BudgetStore(client).reserve(
                        tenant_id=tenant,
                        request_id=request_id,
                        tokens=max_tokens,
                        day=today.date(),
                        daily_limit=limit,
                    )
                    for client, request_id in zip(clients, requests, strict=True)
                )
            )
        finally:
            for client in clients:
                await client.aclose()
        granted = [r for r, ok in zip(requests, results, strict=True) if ok.granted]
        for request_id in granted:
            await publish_event(
                producer,
                USAGE,
                usage(
                    tenant,
                    request_id=request_id,
                    prompt=200,
                    completion=max_tokens - 200,
                    occurred_at=today,
                    reserved=max_tokens,
                ),
            )
        await wait_until(lambda: _count_is(engine, tenant, 1 + len(granted)), what="settled")
        async with engine.connect() as conn:
            totals = await repository.ledger_totals(conn, tenant_id=tenant)
        used = totals.prompt_tokens + totals.completion_tokens
        assert len(granted) == 3, "only what fits under the limit is granted"
        assert used - limit <= len(granted) * max_tokens
        assert used <= limit, "worst cases were reserved, so nothing overshoots"
        client = create_redis(redis_url)
        try:
            snap = await BudgetStore(client).snapshot(tenant_id=tenant, day=today.date())
        finally:
            await client.aclose()
        assert (snap.tokens_used, snap.tokens_reserved) == (used, 0)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test only (it is restarted; the shared one never is)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(port), 10, "redis-server", proc)
        return proc

    state = {"proc": start()}

    def restart() -> None:
        state["proc"].terminate()
        state["proc"].wait(10)
        state["proc"] = start()

    yield f"redis://127.0.0.1:{port}/0", restart
    state["proc"].terminate()
    state["proc"].wait(10)


END_USERS = ("alice", "bob")


async def _drift(redis_url: str, engine: AsyncEngine, tenants: list[uuid.UUID], day) -> dict:
    client = create_redis(redis_url)
    out = {}
    try:
        store = BudgetStore(client)
        async with engine.connect() as conn:
            day_used = await repository.day_token_totals(conn, keys=[(t, day) for t in tenants])
            month_used = await repository.month_spend_totals(
                conn, keys=[(t, day.replace(day=1)) for t in tenants]
            )
            end_users_used = await repository.end_user_day_token_totals(
                conn, keys=[(t, day) for t in tenants]
            )
        for tenant in tenants:
            snap = await store.snapshot(tenant_id=tenant, day=day)
            drift = (
                snap.tokens_used - day_used.get((tenant, day), 0),
                snap.spend_used_micros - month_used.get((tenant, day.replace(day=1)), 0),
                snap.tokens_reserved,
            )
            if drift != (0, 0, 0):
                out[tenant] = drift
        # The end users of the tenant that budgets them: their counters are the ledger's too.
        for end_user in END_USERS:
            used, reserved = await store.end_user_snapshot(
                tenant_id=tenants[0], end_user=end_user, day=day
            )
            ledger = end_users_used.get((tenants[0], day, end_user), 0)
            if (used - ledger, reserved) != (0, 0) or not ledger:
                out[(tenants[0], end_user)] = (used, ledger, reserved)
    finally:
        await client.aclose()
    return out


async def test_zero_drift_after_traffic_stops_including_after_a_redis_restart(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker, own_redis
) -> None:
    redis_url, restart_redis = own_redis
    settings = metering_settings.model_copy(
        update={"redis_url": redis_url, "reconcile_interval_s": 0.5}
    )
    tenants = [uuid.uuid4() for _ in range(3)]
    now = datetime.now(UTC)
    today = now.date()
    events = []
    async with running(settings) as (app, _):
        # The first tenant budgets its end users, whose counters are then reconciled too.
        await publish_event(
            producer,
            TENANTS_CONFIG,
            config_changed(
                tenants[0], daily_tokens=10**9, monthly_micros=10**9, end_user_daily_tokens=10**6
            ),
        )
        await wait_until(lambda: _has_config(app, tenants[0]), what="config known")
        client = create_redis(redis_url)
        try:
            store = BudgetStore(client)
            for i in range(30):
                tenant = tenants[i % 3]
                request_id = uuid.uuid4()
                end_user = END_USERS[i % 2] if i % 5 else None
                granted = await store.reserve(
                    tenant_id=tenant,
                    request_id=request_id,
                    tokens=400,
                    day=today,
                    daily_limit=10**9,
                )
                assert granted.granted
                if end_user is not None:  # the end user's hold, as the edge's admission makes it
                    tokens_key, holds_key = store.end_user_keys(
                        tenant_id=tenant, end_user=end_user, day=today
                    )
                    await client.hset(holds_key, str(request_id), 400)
                    await client.hincrby(tokens_key, "reserved", 400)
                event = usage(
                    tenant,
                    request_id=request_id,
                    prompt=100 + i,
                    completion=i,
                    reserved=400,
                    occurred_at=now,
                    end_user=end_user,
                )
                events.append(event)
                await publish_event(producer, USAGE, event)
        finally:
            await client.aclose()

        async def no_drift() -> bool:
            return not await _drift(redis_url, engine, tenants, today)

        await wait_until(no_drift, what="zero drift after traffic")
        assert sum([await ledger_count(engine, t) for t in tenants]) == 30

        restart_redis()  # every counter, hold and settled-marker is gone
        # Redeliveries after the restart (their markers are lost) and a little new traffic.
        for event in events[:12]:  # the first tenant's end users' among them
            await publish_event(producer, USAGE, event)
        for tenant in tenants:
            await publish_event(
                producer, USAGE, usage(tenant, prompt=5, completion=5, occurred_at=now)
            )
        await wait_until(lambda: _total_is(engine, tenants, 33), what="new traffic recorded")
        await wait_until(no_drift, what="zero drift after the Redis restart")
        await asyncio.sleep(1.2)  # a couple more reconciliation rounds: still none
        assert await _drift(redis_url, engine, tenants, today) == {}


async def _total_is(engine: AsyncEngine, tenants: list[uuid.UUID], n: int) -> bool:
    return sum([await ledger_count(engine, t) for t in tenants]) == n
