"""Fixtures: metering settings on a fresh database and consumer group, and a token issuer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from faststream.kafka import KafkaBroker
from metering_testkit import TestIssuer
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.db import create_engine
from tenantry_metering.config import Settings


@pytest.fixture
async def metering_settings(
    make_database: Callable[[str], Awaitable[str]], kafka_bootstrap: str, redis_url: str
) -> Settings:
    """Settings on a new database with a consumer group of this test."""
    return Settings(
        environment="test",
        postgres_dsn=await make_database("metering"),
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        usage_group_id=f"metering.usage.test-{uuid.uuid4().hex[:8]}",
        lifecycle_group_id=f"metering.lifecycle.test-{uuid.uuid4().hex[:8]}",
        consumer_retry_backoff_s=0.01,
        rollup_interval_s=0.3,
        reconcile_interval_s=3600,
    )


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
async def engine(metering_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(metering_settings.postgres_dsn, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[KafkaBroker]:
    """A plain broker to publish test events with."""
    broker = KafkaBroker(kafka_bootstrap, enable_idempotence=False)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
