"""A test app's lifespan that overruns its shutdown timeout leaves the stuck await in the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from tenantry_common.testing import lifespan
from tenantry_common.testing.lifespan import serving

pytestmark = pytest.mark.unit


async def _stuck_in_shutdown() -> None:
    await asyncio.Event().wait()


def _app(stuck: bool) -> FastAPI:
    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if stuck:
            await _stuck_in_shutdown()

    return FastAPI(lifespan=app_lifespan)


async def test_an_overrunning_shutdown_logs_where_it_waits(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifespan, "MARGIN_S", 0.7)
    caplog.set_level(logging.ERROR, logger="tenantry.testing")
    with pytest.raises(TimeoutError):
        async with serving(_app(stuck=True), startup_timeout=5, shutdown_timeout=1.0):
            pass
    stuck = [r.getMessage() for r in caplog.records if "shutdown still running" in r.getMessage()]
    assert len(stuck) == 1
    assert "_stuck_in_shutdown" in stuck[0]
    assert "app_lifespan" in stuck[0], "the chain runs from the lifespan to its innermost await"


async def test_a_prompt_lifespan_logs_nothing_and_passes_errors_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="tenantry.testing")
    with pytest.raises(ZeroDivisionError):
        async with serving(_app(stuck=False), startup_timeout=5, shutdown_timeout=5):
            _ = 1 / 0
    async with serving(_app(stuck=False)) as app:
        assert app is not None
    assert not caplog.records
