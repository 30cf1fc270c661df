"""The edge's composition root: ``build_app(settings)`` wires stores, broker, replies, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.auth import EDGE_ISSUER, JwksUrlKeys, KeySource, TokenVerifier
from tenantry_common.budget import BudgetStore
from tenantry_common.db import create_engine, ensure_database, run_migrations, session_factory
from tenantry_common.events import Event
from tenantry_common.health import broker_check, db_check, health_router, redis_check
from tenantry_common.messaging import build_broker, publish_event, stop_broker
from tenantry_common.metrics import metrics_router
from tenantry_common.redis import create_redis
from tenantry_common.telemetry import setup_tracing
from tenantry_common.topics import TopicSpec

from tenantry_auth import service
from tenantry_auth.access import AccessGuard
from tenantry_auth.admission import Admission
from tenantry_auth.api import api_routes, install_error_handlers
from tenantry_auth.config import Settings
from tenantry_auth.configs import ConfigCache
from tenantry_auth.conversations import ConversationStore
from tenantry_auth.handlers import lifecycle_router
from tenantry_auth.keys import KeyCipher, KeyRing
from tenantry_auth.limits import BodySizeLimit
from tenantry_auth.plain import EdgeApp
from tenantry_auth.replies import ReplyRouter
from tenantry_auth.security import SecretHasher

log = logging.getLogger("tenantry.auth")

MIGRATIONS = Path(__file__).parent / "migrations"


_REVISION = re.compile(r"^revision\b[^=]*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\b[^=]*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def head_revisions(migrations: Path = MIGRATIONS) -> set[str]:
    """The newest revision(s) of the edge's migrations, read from their files without Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (migrations / "versions").glob("*.py"):
        source = path.read_text()
        if found := _REVISION.search(source):
            revisions.add(found.group(1))
        if down := _DOWN_REVISION.search(source):
            parents |= set(_QUOTED.findall(down.group(1)))
    return revisions - parents


async def _upgrade_in_child(dsn: str) -> None:
    # Alembic pulls in Mako and Mako all of Pygments' lexers: ≈ 10 MiB that a served edge
    # would keep for its whole life after one upgrade. A child process returns them.
    code = (
        "import os, sys, pathlib; from tenantry_common.db import run_migrations; "
        "run_migrations(os.environ['TENANTRY_MIGRATE_DSN'], pathlib.Path(sys.argv[1]))"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(MIGRATIONS), env=os.environ | {"TENANTRY_MIGRATE_DSN": dsn}
    )
    status = await child.wait()
    if status != 0:
        raise RuntimeError(f"the database migration failed (exit code {status}); see the log")


async def migrate(settings: Settings, *, upgrade_in_child: bool = False) -> None:
    """Create the database if needed and upgrade it, one replica at a time.

    A database already at the newest revision is left alone without importing Alembic; the
    served edge runs an upgrade in a child process (``upgrade_in_child``), so it never holds
    Alembic's modules."""
    await ensure_database(settings.postgres_dsn)
    engine = create_engine(settings.postgres_dsn, pool_size=1)
    heads = head_revisions()
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(hashtext('tenantry-auth-migrate'))"))
            await conn.commit()
            try:
                current: set[str] = set()
                if await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
                    rows = await conn.scalars(text("SELECT version_num FROM alembic_version"))
                    current = set(rows)
                await conn.commit()
                if current == heads:
                    return
                if upgrade_in_child:
                    await _upgrade_in_child(settings.postgres_dsn)
                else:
                    await asyncio.to_thread(run_migrations, settings.postgres_dsn, MIGRATIONS)
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(hashtext('tenantry-auth-migrate'))")
                )
                await conn.commit()
    finally:
        await engine.dispose()


def build_edge(
    settings: Settings, *, engine: AsyncEngine, redis: Redis, broker: KafkaBroker
) -> service.Edge:
    """The ``Edge`` the logic works with, over the given connections."""
    sessions = session_factory(engine)
    guard = AccessGuard(redis=redis, sessions=sessions)

    async def publish(topic: TopicSpec, event: Event) -> None:
        await publish_event(broker, topic, event)

    return service.Edge(
        settings=settings,
        sessions=sessions,
        redis=redis,
        publish=publish,
        guard=guard,
        keys=KeyRing(
            sessions=sessions,
            cipher=KeyCipher(settings.signing_key_secret.get_secret_value()),
            token_ttl_s=settings.token_ttl_s,
        ),
        hasher=SecretHasher(
            time_cost=settings.password_hash_time_cost,
            memory_kib=settings.password_hash_memory_kib,
        ),
        budgets=BudgetStore(redis),
        admission=Admission(redis),
        configs=ConfigCache(
            sessions=sessions,
            guard=guard,
            max_age_s=settings.config_cache_max_age_s,
            max_entries=settings.config_cache_size,
        ),
        conversations=ConversationStore(
            redis, max_turns=settings.conversation_turns, ttl_s=settings.conversation_ttl_s
        ),
    )


def build_verifier(settings: Settings, keys: KeyRing) -> TokenVerifier:
    """Tokens of this edge, and of the external issuers named in settings (never in tokens)."""
    issuers: dict[str, KeySource] = {EDGE_ISSUER: keys}
    for external in settings.external_issuers:
        issuers[external.issuer] = JwksUrlKeys(external.jwks_url)
    return TokenVerifier(issuers=issuers, algorithms=("EdDSA", "ES256", "RS256"))


async def _every(seconds: float, what: str, job: object) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()  # type: ignore[operator]
        except Exception as exc:
            log.warning(f"{what} failed", extra={"error_type": type(exc).__name__})


def build_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    migrate_on_start: bool = True,
) -> FastAPI:
    """The edge's FastAPI app; its lifespan starts and stops everything it uses."""
    settings = settings or Settings()
    registry = registry or CollectorRegistry()
    tracer = setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    engine = create_engine(settings.postgres_dsn)
    redis = create_redis(settings.redis_url)
    broker = build_broker(settings, registry=registry, tracer_provider=tracer, client_id="edge")
    edge = build_edge(settings, engine=engine, redis=redis, broker=broker)
    replies = ReplyRouter(
        redis=redis,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        namespace=settings.reply_lease_namespace,
        lease_ttl_s=settings.reply_lease_ttl_s,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        idle_fetch_max_wait_ms=settings.kafka_idle_fetch_max_wait_ms,
        idle_after_s=settings.kafka_idle_after_s,
    )
    verifier = build_verifier(settings, edge.keys)
    broker.include_router(lifecycle_router(settings, edge))
    http = httpx.AsyncClient(timeout=settings.forward_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_on_start:
            await migrate(settings, upgrade_in_child=True)
        await service.ensure_platform_tenant(sessions=edge.sessions)
        if settings.bootstrap_operator_secret is not None:
            await service.bootstrap_operator(
                edge=edge,
                client_id=settings.bootstrap_operator_client_id,
                secret=settings.bootstrap_operator_secret.get_secret_value(),
            )
        await edge.keys.load()
        await broker.start()
        await replies.start()
        tasks = [
            asyncio.create_task(_every(settings.key_refresh_s, "key reload", edge.keys.load)),
            asyncio.create_task(
                _every(
                    settings.onboarding_sweep_s,
                    "onboarding sweep",
                    lambda: service.sweep_stalled_onboardings(edge=edge),
                )
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await replies.stop()
            await stop_broker(broker, timeout_s=settings.graceful_timeout_s)
            await http.aclose()
            await redis.aclose()
            await engine.dispose()

    app = EdgeApp(
        title="Tenantry edge",
        version="1.0.0",
        description="Identity, tenants, configuration, limits and the chat API of Tenantry.",
        lifespan=lifespan,
    )
    app.state.edge = edge
    app.state.broker = broker  # for the AsyncAPI document (scripts/asyncapi.py)
    app.state.replies = replies
    app.state.http = http
    app.state.settings = settings
    app.add_middleware(
        BodySizeLimit,
        default_limit=settings.max_json_body_bytes,
        upload_limit=max(settings.max_document_bytes, settings.max_upload_bytes) + 64_000,
        upload_paths=("/v1/documents",),
    )
    install_error_handlers(app)
    app.include_router(
        health_router(
            {"broker": broker_check(broker), "db": db_check(engine), "redis": redis_check(redis)}
        )
    )
    app.include_router(metrics_router(registry))
    routes = api_routes(edge=edge, verifier=verifier, replies=replies, http=http)
    app.include_router(routes.router)
    # The chat routes, the edge's hot path, skip the middleware stack above (see plain.py).
    app.plain_routes = routes.plain
    return app
