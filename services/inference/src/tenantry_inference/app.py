"""The inference app: broker with its subscribers, health, metrics, and the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from tenantry_common.health import broker_check, health_router
from tenantry_common.messaging import build_broker, stop_broker
from tenantry_common.metrics import metrics_router

from tenantry_inference.config import Settings
from tenantry_inference.handlers import register_handlers
from tenantry_inference.llm import ModelGateway
from tenantry_inference.metrics import InferenceMetrics
from tenantry_inference.service import InferenceDeps, TenantDirectory
from tenantry_inference.tokens import TokenCounter, load_counter

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("tenantry.inference")


def build_deps(settings: Settings, *, registry: CollectorRegistry) -> InferenceDeps:
    """The service's dependencies (token counters are loaded by the lifespan)."""
    catalogue = settings.catalogue()
    return InferenceDeps(
        catalogue=catalogue,
        directory=TenantDirectory(),
        gateway=ModelGateway(
            catalogue=catalogue,
            api_keys={name: settings.model_api_key(name) for name in catalogue},
            timeout_s=settings.model_timeout_s,
            max_retries=settings.model_max_retries,
            timeouts=settings.model_timeouts,
            whole_answer_timeout_s=settings.model_total_timeout_s,
        ),
        counters={},
        metrics=InferenceMetrics(registry),
        min_completion_tokens=settings.min_completion_tokens,
        holdback_chars=settings.leakage_holdback_chars,
        total_timeout_s=settings.model_total_timeout_s,
        config_wait_s=settings.config_wait_s,
    )


async def load_counters(settings: Settings, models: list[str]) -> dict[str, TokenCounter]:
    """Token counters for the models that name a tokenizer (an estimate for the others)."""
    counters: dict[str, TokenCounter] = {}
    for model in models:
        reference = settings.tokenizer_reference(model)
        if not reference:
            continue
        try:
            counters[model] = await asyncio.to_thread(load_counter, reference)
        except (OSError, ValueError) as exc:
            log.warning(
                "tokenizer unavailable; counting with an estimate",
                extra={"model": model, "error_type": type(exc).__name__},
            )
    return counters


def build_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The FastAPI app whose lifespan runs the broker and its subscribers."""
    registry = registry if registry is not None else CollectorRegistry()
    broker = build_broker(settings, registry=registry, tracer_provider=tracer_provider)
    deps = build_deps(settings, registry=registry)
    register_handlers(broker, settings=settings, deps=deps)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deps.counters.update(await load_counters(settings, list(deps.catalogue)))
        await broker.start()
        try:
            yield
        finally:
            await stop_broker(broker, timeout_s=settings.graceful_timeout_s)
            await deps.gateway.aclose()

    app = FastAPI(title="tenantry-inference", lifespan=lifespan)
    app.state.broker = broker
    app.state.deps = deps
    app.include_router(health_router({"broker": broker_check(broker)}))
    app.include_router(metrics_router(registry))
    return app
