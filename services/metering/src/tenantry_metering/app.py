"""Builds metering: the broker and its subscribers, the lifespan, health, metrics and the API."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from tenantry_common.auth import EDGE_ISSUER, JwksUrlKeys, TokenVerifier
from tenantry_common.budget import BudgetStore
from tenantry_common.db import create_engine, ensure_database, run_migrations
from tenantry_common.health import broker_check, db_check, health_router, redis_check
from tenantry_common.messaging import build_broker, stop_broker
from tenantry_common.metrics import metrics_router
from tenantry_common.redis import create_redis

from tenantry_metering import repository as repo
from tenantry_metering.api import usage_router
from tenantry_metering.config import Settings
from tenantry_metering.handlers import register_handlers
from tenantry_metering.metrics import MeteringMetrics
from tenantry_metering.runtime import Runtime

MIGRATIONS = Path(__file__).parent / "migrations"


async def prepare_database(dsn: str) -> None:
    """Create the database if it is missing and migrate it to the newest revision."""
    await ensure_database(dsn)
    # Alembic's env runs its own event loop: give it a thread.
    await asyncio.to_thread(run_migrations, dsn, MIGRATIONS)


#: Collect the youngest generation after this many net allocations (CPython's default: 700).
GC_GEN0_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Keep the cycle collector off the usage hot path (process-wide; called once started).

    A usage batch holds tens of thousands of container objects (models, lists, tuples) alive at
    once; at CPython's default threshold the collector ran dozens of times per batch, promoted
    whole batches to the oldest generation and walked the process's heap again and again
    (measured: a quarter of the consumer's CPU). Objects alive at start-up (modules, settings,
    engines) live as long as the process: frozen, no collection walks them; a batch's objects
    die by reference counting before the higher threshold is reached.
    """
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


def build_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    verifier: TokenVerifier | None = None,
) -> FastAPI:
    """The metering service as one FastAPI app whose lifespan runs the broker."""
    registry = registry or CollectorRegistry()
    broker = build_broker(settings, registry=registry)
    runtime = Runtime(settings=settings, broker=broker, metrics=MeteringMetrics(registry))
    register_handlers(broker, runtime, settings)
    verifier = verifier or TokenVerifier(issuers={EDGE_ISSUER: JwksUrlKeys(settings.jwks_url)})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prepare_database(settings.postgres_dsn)
        runtime.engine = create_engine(settings.postgres_dsn)
        runtime.redis = create_redis(settings.redis_url)
        runtime.budgets = BudgetStore(runtime.redis)
        async with runtime.engine.connect() as conn:
            runtime.directory.offboarded |= await repo.offboarded_tenant_ids(conn)
        # Redis may have restarted while we were away: the ledger is the truth.
        await runtime.reconcile_now()
        tune_garbage_collector()
        await broker.start()
        runtime.start_background()
        try:
            yield
        finally:
            await runtime.stop_background()
            await stop_broker(broker, timeout_s=settings.graceful_timeout_s)
            await runtime.redis.aclose()
            await runtime.engine.dispose()

    app = FastAPI(title="Tenantry metering", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.broker = broker  # for the AsyncAPI document (scripts/asyncapi.py)
    app.include_router(
        health_router(
            {
                "broker": broker_check(broker),
                "database": lambda: db_check(runtime.db())(),
                "redis": lambda: redis_check(runtime.redis)() if runtime.redis else _not_started(),
            }
        )
    )
    app.include_router(metrics_router(registry))
    app.include_router(usage_router(runtime, verifier))
    return app


async def _not_started() -> object:
    raise ConnectionError("not started")
