"""Shutdown: messages in flight finish before the broker stops its consumers; nothing new starts.

Uses FastStream's own in-flight lock (``MultiLock``), so a FastStream upgrade that changes it
fails here rather than silently in production (the process test is services/inference's
``python -m`` SIGTERM test).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from faststream._internal.endpoint.subscriber.utils import MultiLock
from tenantry_common.messaging import drain_consumers

pytestmark = pytest.mark.unit


class FakeSubscriber:
    def __init__(self, lock: Any) -> None:
        self.running = True
        self.lock = lock


class FakeBroker:
    def __init__(self, *subscribers: FakeSubscriber) -> None:
        self.subscribers = list(subscribers)


async def test_drain_stops_new_messages_and_waits_for_the_one_in_flight() -> None:
    busy, idle = FakeSubscriber(MultiLock()), FakeSubscriber(MultiLock())
    busy.lock.acquire()  # one message in flight
    drained = asyncio.create_task(drain_consumers(FakeBroker(busy, idle), timeout_s=10))
    await asyncio.sleep(0.05)
    assert not busy.running
    assert not idle.running
    assert not drained.done()
    busy.lock.release()  # the handler (and its commit) finished
    assert await asyncio.wait_for(drained, 5) is True


async def test_drain_gives_up_after_the_graceful_timeout(caplog: pytest.LogCaptureFixture) -> None:
    stuck = FakeSubscriber(MultiLock())
    stuck.lock.acquire()
    assert await drain_consumers(FakeBroker(stuck), timeout_s=0.05) is False
    assert "still in flight" in caplog.text


async def test_a_subscriber_that_never_started_has_nothing_to_drain() -> None:
    never_started = FakeSubscriber(contextlib.nullcontext())
    assert await drain_consumers(FakeBroker(never_started), timeout_s=10) is True
