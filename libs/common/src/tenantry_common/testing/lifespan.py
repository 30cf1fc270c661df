"""An app's lifespan for tests, which says where it is stuck when startup or shutdown is slow.

``asgi_lifespan.LifespanManager`` only raises ``TimeoutError`` when a lifespan overruns, and by
then nothing shows what it was waiting for. ``serving`` logs every asyncio task's await chain
(file, line, function, innermost last) shortly before the timeout, so a flaky overrun in CI
leaves the stuck await in the test's captured log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from asgi_lifespan import LifespanManager

log = logging.getLogger("tenantry.testing")

#: The stacks are logged this long before the lifespan's timeout.
MARGIN_S = 2.0


@contextlib.asynccontextmanager
async def serving(
    app: Any, *, startup_timeout: float = 60.0, shutdown_timeout: float = 60.0
) -> AsyncIterator[Any]:
    """Run ``app``'s lifespan around the block; yields the app the manager wraps."""
    manager = LifespanManager(
        app, startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout
    )
    async with _stacks_logged_after(startup_timeout - MARGIN_S, "startup"):
        await manager.__aenter__()
    exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None] = (
        None,
        None,
        None,
    )
    try:
        yield manager.app
    except BaseException as exc:
        exc_info = (type(exc), exc, exc.__traceback__)
        raise
    finally:
        async with _stacks_logged_after(shutdown_timeout - MARGIN_S, "shutdown"):
            await manager.__aexit__(*exc_info)


@contextlib.asynccontextmanager
async def _stacks_logged_after(after_s: float, what: str) -> AsyncIterator[None]:
    watchdog = asyncio.create_task(_log_stacks_later(max(after_s, 0.0), what))
    try:
        yield
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog


async def _log_stacks_later(after_s: float, what: str) -> None:
    await asyncio.sleep(after_s)
    current = asyncio.current_task()
    chains = [
        f"task {task.get_name()}:\n" + "\n".join(f"  {line}" for line in await_chain(task))
        for task in asyncio.all_tasks()
        if task is not current
    ]
    log.error(f"lifespan {what} still running after {after_s:.1f} s; tasks:\n" + "\n".join(chains))


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where a task is suspended: its coroutine and what each awaits, outermost first."""
    lines: list[str] = []
    awaitable: Any = task.get_coro()
    for _ in range(64):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            frame = getattr(awaitable, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        following = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "ag_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
            or _async_generator_of(awaitable)
        )
        if following is None:
            if awaitable is not None and frame is None:
                lines.append(repr(awaitable)[:200])  # a future or a C-level awaitable
            break
        awaitable = following
    return lines


def _async_generator_of(awaitable: Any) -> Any:
    """The async generator an ``asend``/``athrow`` awaitable drives (an async context manager's
    body, e.g. a lifespan), which Python 3.11 exposes only to the garbage collector."""
    if type(awaitable).__name__ not in ("async_generator_asend", "async_generator_athrow"):
        return None
    return next((r for r in gc.get_referents(awaitable) if inspect.isasyncgen(r)), None)
