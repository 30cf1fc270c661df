"""A consumer's fetch wait that follows its traffic: short while messages flow, long when idle.

Tansu, the local broker, answers a waiting fetch only at its deadline (``messaging.py``), so a
consumer on a request's path asks with a short wait (``kafka_fetch_max_wait_ms``, 3 ms) and
fetches ≈ 330 times a second whether anything arrives or not. On a fresh local stack at rest the
three such consumers and the broker's answers to them took ≈ 0.6 of a core: 0.76 cores for the
whole stack against 0.17 with a 100 ms wait (2026-12-06, bench/README.md, "Idle fetches"). And
under load a consumer off the load's path (retrieval's questions in gateway mode) kept polling.

``FetchWait`` moves a consumer that has seen nothing for ``idle_after_s`` (and is not expecting
anything, ``busy``) to ``idle_wait_ms``, and back to ``wait_ms`` as soon as a message comes. The
price: the first message after a quiet spell may wait up to ``idle_wait_ms`` longer at that hop
(measured through the stack: about 1 ms more at p50, docs/operations.md).

On Apache Kafka a waiting fetch returns when data arrives; the compose file and the k8s
ConfigMap set the wait to 500 ms, and an idle wait not above the wait turns this off.

aiokafka has no public way to change a running consumer's fetch wait. Its fetcher builds every
fetch request from ``_fetch_max_wait_ms`` (aiokafka 0.14, pinned in uv.lock), which this sets.
Should a release drop that attribute, the wait stays fixed (with a warning) and the integration
test that counts fetch requests fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from tenantry_common.settings import CommonSettings

log = logging.getLogger("tenantry.messaging")

_WAIT_ATTRIBUTE = "_fetch_max_wait_ms"


def _never_busy() -> bool:
    return False


class FetchWait:
    """Sets one started consumer's fetch wait from how recently it saw a message."""

    def __init__(
        self,
        *,
        wait_ms: int,
        idle_wait_ms: int,
        idle_after_s: float,
        busy: Callable[[], bool] = _never_busy,
    ) -> None:
        self.wait_ms = wait_ms
        self.idle_wait_ms = idle_wait_ms
        self.idle_after_s = idle_after_s
        self.busy = busy
        self.idle = False
        self._fetcher: Any = None
        self._last_seen = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: CommonSettings, *, busy: Callable[[], bool] = _never_busy
    ) -> FetchWait:
        """The service's fetch waits (``kafka_fetch_max_wait_ms``, ``kafka_idle_fetch_*``)."""
        return cls(
            wait_ms=settings.kafka_fetch_max_wait_ms,
            idle_wait_ms=settings.kafka_idle_fetch_max_wait_ms,
            idle_after_s=settings.kafka_idle_after_s,
            busy=busy,
        )

    @property
    def adaptive(self) -> bool:
        """Whether the wait changes at all (the idle wait is longer than the wait)."""
        return self.idle_wait_ms > self.wait_ms

    def attach(self, consumer: AIOKafkaConsumer) -> None:
        """Follow ``consumer`` (started, with ``wait_ms`` as its fetch wait) until ``detach``."""
        if not self.adaptive:
            return
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, _WAIT_ATTRIBUTE):
            log.warning(
                "cannot change this aiokafka consumer's fetch wait; it stays fixed",
                extra={"fetch_max_wait_ms": self.wait_ms},
            )
            return
        self.detach()
        self._fetcher = fetcher
        self._last_seen = time.monotonic()
        self._set(idle=False)
        self._task = asyncio.create_task(self._watch(), name="fetch-wait")

    def detach(self) -> None:
        """Stop following the consumer (it is stopping)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._fetcher = None

    def seen(self) -> None:
        """A message arrived, or one is expected: short waits from the next fetch on."""
        self._last_seen = time.monotonic()
        if self.idle:
            self._set(idle=False)

    def _set(self, *, idle: bool) -> None:
        self.idle = idle
        if self._fetcher is not None:
            setattr(self._fetcher, _WAIT_ATTRIBUTE, self.idle_wait_ms if idle else self.wait_ms)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.idle_after_s / 2)
            quiet_s = time.monotonic() - self._last_seen
            if not self.idle and quiet_s >= self.idle_after_s and not self.busy():
                self._set(idle=True)
