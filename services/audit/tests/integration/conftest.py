"""Fixtures: a fresh, migrated audit database per test, the writer's engine, a superuser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit.app import MIGRATIONS
from tenantry_audit.config import AuditSettings, writer_dsn_for
from tenantry_common.db import create_engine, run_migrations


@pytest.fixture
async def audit_settings(
    make_database: Callable[[str], Awaitable[str]], kafka_bootstrap: str
) -> AuditSettings:
    """Settings on a new database, migrated as the owner; no background jobs, no auto-migrate."""
    owner_dsn = await make_database("audit")
    await asyncio.to_thread(run_migrations, owner_dsn, MIGRATIONS)
    return AuditSettings(
        environment="test",
        postgres_dsn=owner_dsn,
        writer_dsn=writer_dsn_for(owner_dsn),
        kafka_bootstrap_servers=kafka_bootstrap,
        migrate_on_start=False,
        background_jobs=False,
        consumer_retry_backoff_s=0.01,
    )


@pytest.fixture
async def writer_engine(audit_settings: AuditSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(audit_settings.writer_dsn, pool_size=4)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def superuser(audit_settings: AuditSettings) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the audit database: the tamperer in the tamper tests."""
    url = make_url(audit_settings.postgres_dsn)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        yield conn
    finally:
        await conn.close()
