"""Helpers for metering's integration tests: events, tokens, a running service, broker reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.events import (
    Reservation,
    TenantConfig,
    TenantConfigChanged,
    Tier,
    UsageRecorded,
)
from tenantry_common.ids import derived_id
from tenantry_common.settings import LOCAL_MODEL
from tenantry_common.testing.lifespan import serving
from tenantry_common.testing.tokens import TestIssuer
from tenantry_metering.app import build_app
from tenantry_metering.config import Settings


def usage(
    tenant_id: uuid.UUID,
    *,
    prompt: int = 100,
    completion: int = 50,
    model: str = LOCAL_MODEL,
    occurred_at: datetime | None = None,
    request_id: uuid.UUID | None = None,
    reserved: int = 0,
    reserved_day: date | None = None,
    end_user: str | None = None,
) -> UsageRecorded:
    """A UsageRecorded as inference sends it (event id derived from the request id)."""
    request_id = request_id or uuid.uuid4()
    occurred_at = occurred_at or datetime.now(UTC)
    return UsageRecorded(
        event_id=derived_id(request_id, "usage"),
        tenant_id=tenant_id,
        occurred_at=occurred_at,
        request_id=request_id,
        user_id="user-1",
        end_user=end_user,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        reservation=Reservation(
            reserved_tokens=reserved, period_day=reserved_day or occurred_at.date()
        ),
        source="test",
    )


def config_changed(
    tenant_id: uuid.UUID,
    *,
    daily_tokens: int,
    monthly_micros: int,
    version: int = 1,
    end_user_daily_tokens: int = 0,
) -> TenantConfigChanged:
    return TenantConfigChanged(
        tenant_id=tenant_id,
        version=version,
        changed_by="test",
        config=TenantConfig(
            tenant_name=f"t-{tenant_id.hex[:6]}",
            tier=Tier.PRO,
            model=LOCAL_MODEL,
            allowed_models=[LOCAL_MODEL],
            temperature=0.2,
            max_tokens_per_request=256,
            system_prompt_template="You help.",
            rate_limit_per_minute=600,
            daily_token_budget=daily_tokens,
            end_user_daily_token_budget=end_user_daily_tokens,
            monthly_spend_budget_micros=monthly_micros,
            cache_similarity_threshold=0.9,
        ),
    )


@asynccontextmanager
async def running(
    settings: Settings, issuer: TestIssuer | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The metering app with its lifespan (broker, database, Redis) and an HTTP client."""
    app = build_app(settings, verifier=(issuer or TestIssuer()).verifier())
    async with serving(app) as served:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://metering") as client:
            yield app, client


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.1)


async def read_topic(
    bootstrap: str, topic: str, *, idle_s: float = 1.5, timeout_s: float = 20.0
) -> list[Any]:
    """Every record of a topic (read until it has been idle for ``idle_s``)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = loop.time()
        while loop.time() < deadline and loop.time() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
                last = loop.time()
    finally:
        await consumer.stop()
    return records


async def ledger_count(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    from tenantry_metering import repository

    async with engine.connect() as conn:
        return (await repository.ledger_totals(conn, tenant_id=tenant_id)).events
