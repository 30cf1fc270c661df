"""``/healthz`` (the process is alive) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry_common.db import ping

Check = Callable[[], Awaitable[object]]


def broker_check(broker: KafkaBroker) -> Check:
    async def check() -> object:
        if not await broker.ping(timeout=2.0):
            raise ConnectionError("broker unreachable")
        return True

    return check


def db_check(engine: AsyncEngine) -> Check:
    return lambda: ping(engine)


def redis_check(redis: Redis) -> Check:
    async def check() -> object:
        return await redis.ping()

    return check


def health_router(checks: Mapping[str, Check], *, timeout_s: float = 2.0) -> APIRouter:
    """Health endpoints; readiness runs every check concurrently with a timeout."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        async def run(name: str, check: Check) -> tuple[str, str]:
            try:
                await asyncio.wait_for(check(), timeout_s)
                return name, "ok"
            except Exception as exc:
                return name, f"unavailable: {type(exc).__name__}"

        results = dict(await asyncio.gather(*(run(n, c) for n, c in checks.items())))
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": results},
            status_code=200 if ready else 503,
        )

    return router
