"""The composition root: engine, broker, subscribers, routes, background jobs, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from tenantry_common.auth import EDGE_ISSUER, JwksUrlKeys, TokenVerifier, principal_dependency
from tenantry_common.db import create_engine, ensure_database, run_migrations
from tenantry_common.health import broker_check, db_check, health_router
from tenantry_common.messaging import build_broker, stop_broker
from tenantry_common.metrics import metrics_router
from tenantry_common.telemetry import setup_tracing

from tenantry_audit import jobs
from tenantry_audit.api import ApiContext, build_router
from tenantry_audit.config import AuditSettings
from tenantry_audit.handlers import register_handlers
from tenantry_audit.metrics import AuditMetrics

MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(settings: AuditSettings) -> None:
    """Create the database if needed and upgrade it, as the owner (never as the writer)."""
    await ensure_database(settings.postgres_dsn)
    # Alembic's env runs its own event loop: give it a thread.
    await asyncio.to_thread(run_migrations, settings.postgres_dsn, MIGRATIONS)


def build_app(
    settings: AuditSettings,
    *,
    verifier: TokenVerifier | None = None,
    registry: CollectorRegistry | None = None,
    group_prefix: str = "",
) -> FastAPI:
    """The audit service: consumes ``audit.v1``, serves export/verify, runs its jobs."""
    registry = registry or CollectorRegistry()
    metrics = AuditMetrics(registry)
    tracer_provider = setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    broker = build_broker(settings, registry=registry, tracer_provider=tracer_provider)
    engine = create_engine(settings.writer_dsn)
    register_handlers(
        broker, settings=settings, engine=engine, metrics=metrics, group_prefix=group_prefix
    )
    verifier = verifier or TokenVerifier(issuers={EDGE_ISSUER: JwksUrlKeys(settings.jwks_url)})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await migrate(settings)
        await broker.start()
        tasks: list[asyncio.Task[None]] = []
        if settings.background_jobs:
            anchors = jobs.AnchorPublisher(engine=engine, broker=broker, metrics=metrics)
            tasks.append(
                asyncio.create_task(
                    jobs.every(settings.anchor_interval_s, anchors.publish, name="anchors")
                )
            )
            tasks.append(
                asyncio.create_task(
                    jobs.every(
                        settings.retention_interval_s,
                        lambda: jobs.run_retention(
                            engine=engine, settings=settings, broker=broker, metrics=metrics
                        ),
                        name="retention",
                        initial_delay_s=settings.retention_initial_delay_s,
                    )
                )
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stop_broker(broker, timeout_s=settings.graceful_timeout_s)
            await engine.dispose()

    app = FastAPI(title="Tenantry audit", version="1", lifespan=lifespan)
    app.state.broker = broker  # for the AsyncAPI document (scripts/asyncapi.py)
    app.state.audit = ApiContext(
        settings=settings,
        engine=engine,
        broker=broker,
        metrics=metrics,
        authenticate=principal_dependency(verifier),
    )
    app.include_router(health_router({"broker": broker_check(broker), "db": db_check(engine)}))
    app.include_router(metrics_router(registry))
    app.include_router(build_router())
    return app
