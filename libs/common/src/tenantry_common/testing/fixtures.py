"""Pytest fixtures for real services: broker, Postgres, Redis and the local model server.

Loaded by the repository's root ``conftest.py``. Each fixture takes, in order:

1. an explicit address from the environment (``TENANTRY_TEST_KAFKA``, ``TENANTRY_TEST_POSTGRES``,
   ``TENANTRY_TEST_REDIS``, ``TENANTRY_TEST_MODEL_URL``);
2. with ``TENANTRY_TEST_CONTAINERS=1`` on a machine with a Docker engine, a testcontainers
   container (Apache Kafka, Postgres, Redis);
3. otherwise the local services: a Tansu broker this session starts on a free port, the
   Postgres and Redis on 127.0.0.1, and a SmolLM2 server this session starts.

Every test session gets its own broker and its own databases, so parallel sessions never meet.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tenantry_common.localstack import (
    free_port,
    start_model_server,
    start_tansu,
    stop_process,
)
from tenantry_common.messaging import ensure_topics
from tenantry_common.topics import all_topics_with_dlqs

ROOT = Path(__file__).resolve().parents[5]
LOG_DIR = ROOT / "var" / "log" / "tests"


def _use_containers() -> bool:
    return os.environ.get("TENANTRY_TEST_CONTAINERS") == "1"


@contextmanager
def private_broker() -> Iterator[str]:
    """A Tansu broker of its own (every topic created), for tests whose consumer groups must
    not inherit other tests' backlog on the session broker; stopped on exit."""
    port = free_port()
    proc = start_tansu(port, LOG_DIR / f"tansu-{port}.log")
    bootstrap = f"127.0.0.1:{port}"
    try:
        asyncio.run(ensure_topics(bootstrap, all_topics_with_dlqs()))
        yield bootstrap
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a broker holding every platform topic (and its DLQ)."""
    explicit = os.environ.get("TENANTRY_TEST_KAFKA")
    if explicit:
        asyncio.run(ensure_topics(explicit, all_topics_with_dlqs()))
        yield explicit
        return
    if _use_containers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            asyncio.run(ensure_topics(bootstrap, all_topics_with_dlqs()))
            yield bootstrap
        return
    with private_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    """An asyncpg SQLAlchemy DSN of a superuser on the ``postgres`` database."""
    explicit = os.environ.get("TENANTRY_TEST_POSTGRES")
    if explicit:
        yield explicit
        return
    if _use_containers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    yield "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _asyncpg_args(dsn: str, database: str | None = None) -> dict[str, Any]:
    url = make_url(dsn)
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database or "postgres",
    }


@pytest.fixture(scope="session")
def make_database(postgres_admin_dsn: str) -> Iterator[Callable[[str], Awaitable[str]]]:
    """``await make_database("audit")`` → the DSN of a new, empty database, dropped at the end."""
    created: list[str] = []

    async def make(prefix: str) -> str:
        name = f"tenantry_test_{prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(**_asyncpg_args(postgres_admin_dsn))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return str(make_url(postgres_admin_dsn).set(database=name).render_as_string(False))

    yield make

    async def drop_all() -> None:
        conn = await asyncpg.connect(**_asyncpg_args(postgres_admin_dsn))
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    if created:
        asyncio.run(drop_all())


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL. Tests share it: they scope their keys by fresh tenant UUIDs, never flush."""
    explicit = os.environ.get("TENANTRY_TEST_REDIS")
    if explicit:
        yield explicit
        return
    if _use_containers():
        from testcontainers.redis import RedisContainer

        with RedisContainer() as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    yield "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def model_server_url() -> Iterator[str]:
    """Base URL (``…/v1``) of an OpenAI-compatible server running SmolLM2-135M."""
    explicit = os.environ.get("TENANTRY_TEST_MODEL_URL")
    if explicit:
        yield explicit
        return
    port = free_port()
    proc = start_model_server(port, LOG_DIR / f"model-{port}.log")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    from tenantry_common.redis import create_redis

    client = create_redis(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
