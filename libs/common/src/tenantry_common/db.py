"""Async SQLAlchemy (asyncpg) engines, sessions, database creation and Alembic migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(dsn: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An asyncpg engine that checks connections before use and whose commits are durable.

    Pre-ping survives a Postgres restart. Every consumer commits its Kafka offsets right after
    its database commit, so a commit the server acknowledges must survive a server crash: with
    ``synchronous_commit = off`` (a server, database or role default some clusters set for
    speed) Postgres acknowledges before the WAL is flushed and a crash loses the last few
    hundred milliseconds of acknowledged transactions — records whose offsets are already
    committed, i.e. lost for good. Such sessions are raised to ``on``; stronger settings
    (``remote_write``, ``remote_apply``) and ``local`` are left as they are.
    """
    engine = create_async_engine(
        dsn, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo
    )
    event.listen(engine.sync_engine, "connect", _durable_commits)
    return engine


def _durable_commits(dbapi_connection: Any, _record: Any) -> None:
    async def raise_if_off(conn: asyncpg.Connection) -> None:
        # Outside any transaction (simple protocol), so the SET holds for the session.
        if await conn.fetchval("SELECT current_setting('synchronous_commit')") == "off":
            await conn.execute("SET synchronous_commit = on")

    dbapi_connection.run_async(raise_if_off)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One session in one transaction: committed on success, rolled back on error."""
    async with sessions() as session, session.begin():
        yield session


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it is missing; True when it was created."""
    url = make_url(dsn)
    name = url.database
    if not name:
        raise ValueError("the DSN names no database")
    admin = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database="postgres",
    )
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await admin.execute(f'CREATE DATABASE "{name}"')
        return True
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()


def run_migrations(dsn: str, migrations_dir: Path) -> None:
    """Upgrade a database to the newest revision of a service's Alembic migrations."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    command.upgrade(config, "head")


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def run_alembic_env(target_metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``: online, async, via asyncpg."""
    import asyncio

    from alembic import context
    from sqlalchemy.engine import Connection
    from sqlalchemy.pool import NullPool

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: sqlalchemy.url is not set")

    def migrate(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as conn:
            await conn.run_sync(migrate)
            await conn.commit()
        await engine.dispose()

    asyncio.run(run())
