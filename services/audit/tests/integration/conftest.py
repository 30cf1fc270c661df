"""Fixtures: a fresh, migrated audit database per test, the writer's engine, a superuser."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from audit_testkit import new_audit_settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit.config import AuditSettings
from tenantry_common.db import create_engine


@pytest.fixture
async def audit_settings(
    make_database: Callable[[str], Awaitable[str]], kafka_bootstrap: str
) -> AuditSettings:
    """A fresh, migrated database for this test."""
    return await new_audit_settings(make_database, kafka_bootstrap)


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
