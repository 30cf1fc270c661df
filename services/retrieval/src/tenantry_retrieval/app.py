"""Composition root: builds the broker, the retrieval service and the FastAPI app around them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from tenantry_common.health import broker_check, health_router, redis_check
from tenantry_common.messaging import build_broker, stop_broker
from tenantry_common.metrics import metrics_router
from tenantry_common.redis import create_redis
from tenantry_common.telemetry import setup_tracing

from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.embeddings import Embedder, MicroBatcher, build_embedder
from tenantry_retrieval.handlers import register_handlers
from tenantry_retrieval.metrics import RetrievalMetrics
from tenantry_retrieval.service import RetrievalService
from tenantry_retrieval.vectorstore import VectorStore, build_store


def build_app(
    settings: RetrievalSettings,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    redis: Redis | None = None,
    registry: CollectorRegistry | None = None,
    group_prefix: str = "",
) -> FastAPI:
    """The retrieval process: subscribers on a broker the lifespan starts and stops.

    Dependencies not passed in are built from the settings (the local embedder loads its
    weights here, before the server accepts traffic); those passed in stay the caller's.
    """
    registry = registry if registry is not None else CollectorRegistry()
    owned_embedder = embedder is None
    owned_redis = redis is None
    embedder = embedder or build_embedder(settings)
    store = store or build_store(settings, dimension=embedder.dimension)
    redis = redis or create_redis(settings.redis_url)
    tracer_provider = setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    broker = build_broker(settings, registry=registry, tracer_provider=tracer_provider)
    service = RetrievalService(
        settings=settings,
        store=store,
        embedder=embedder,
        batcher=MicroBatcher(
            embedder,
            window_s=settings.embed_batch_window_ms / 1000,
            max_batch=settings.embed_max_batch,
        ),
        redis=redis,
        metrics=RetrievalMetrics(registry),
    )
    register_handlers(broker, service, settings, group_prefix=group_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        try:
            yield
        finally:
            # In-flight handlers finish and commit (graceful_timeout_s) before consumers leave.
            await stop_broker(broker, timeout_s=settings.graceful_timeout_s)
            await store.close()
            if owned_embedder:
                await embedder.close()
            if owned_redis:
                await redis.aclose()

    async def vector_store_check() -> object:
        await store.ping()
        return True

    app = FastAPI(title="tenantry-retrieval", lifespan=lifespan)
    app.state.service = service
    app.state.broker = broker
    app.include_router(
        health_router(
            {
                "broker": broker_check(broker),
                "redis": redis_check(redis),
                "vector_store": vector_store_check,
            }
        )
    )
    app.include_router(metrics_router(registry))
    return app
