"""A consumer's fetch wait: short while messages come, longer after a quiet spell, never longer
while its owner expects a message; untouched where the idle wait is not longer (Apache Kafka).

Against the real broker and aiokafka's real fetcher: tests/integration/test_fetchwait_broker.py.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from tenantry_common.fetchwait import FetchWait
from tenantry_common.settings import CommonSettings

pytestmark = pytest.mark.unit

QUIET_S = 0.05


def _consumer(wait_ms: int = 3) -> Any:
    """Stands in for a started AIOKafkaConsumer: only the attribute FetchWait sets."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=wait_ms))


async def test_a_quiet_consumer_waits_longer_and_the_next_message_shortens_it_at_once() -> None:
    consumer = _consumer()
    wait = FetchWait(wait_ms=3, idle_wait_ms=50, idle_after_s=QUIET_S)
    wait.attach(consumer)
    try:
        assert consumer._fetcher._fetch_max_wait_ms == 3
        await asyncio.sleep(QUIET_S * 3)
        assert wait.idle
        assert consumer._fetcher._fetch_max_wait_ms == 50
        wait.seen()
        assert not wait.idle
        assert consumer._fetcher._fetch_max_wait_ms == 3
    finally:
        wait.detach()


async def test_messages_keep_it_short() -> None:
    consumer = _consumer()
    wait = FetchWait(wait_ms=3, idle_wait_ms=50, idle_after_s=QUIET_S)
    wait.attach(consumer)
    try:
        for _ in range(8):
            await asyncio.sleep(QUIET_S / 3)
            wait.seen()
        assert consumer._fetcher._fetch_max_wait_ms == 3
    finally:
        wait.detach()


async def test_a_consumer_whose_owner_expects_a_message_stays_short() -> None:
    consumer = _consumer()
    expecting = True
    wait = FetchWait(wait_ms=3, idle_wait_ms=50, idle_after_s=QUIET_S, busy=lambda: expecting)
    wait.attach(consumer)
    try:
        await asyncio.sleep(QUIET_S * 3)
        assert consumer._fetcher._fetch_max_wait_ms == 3, "an answer is awaited"
        expecting = False
        await asyncio.sleep(QUIET_S * 3)
        assert consumer._fetcher._fetch_max_wait_ms == 50
    finally:
        wait.detach()


async def test_an_idle_wait_not_longer_than_the_wait_changes_nothing() -> None:
    # Apache Kafka (compose, k8s): a 500 ms wait that returns on arrival; the default idle
    # wait (50 ms) is shorter, so the consumer is left alone.
    settings = CommonSettings(kafka_fetch_max_wait_ms=500)
    wait = FetchWait.from_settings(settings)
    assert not wait.adaptive
    consumer = _consumer(500)
    wait.attach(consumer)
    await asyncio.sleep(settings.kafka_idle_after_s / 10)
    assert consumer._fetcher._fetch_max_wait_ms == 500
    assert wait._task is None


async def test_a_consumer_without_the_attribute_keeps_its_wait_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wait = FetchWait(wait_ms=3, idle_wait_ms=50, idle_after_s=QUIET_S)
    with caplog.at_level(logging.WARNING, logger="tenantry.messaging"):
        wait.attach(SimpleNamespace(_fetcher=SimpleNamespace()))  # type: ignore[arg-type]
    assert "stays fixed" in caplog.text
    assert wait._task is None
    wait.seen()  # harmless


async def test_detach_stops_following() -> None:
    consumer = _consumer()
    wait = FetchWait(wait_ms=3, idle_wait_ms=50, idle_after_s=QUIET_S)
    wait.attach(consumer)
    wait.detach()
    await asyncio.sleep(QUIET_S * 3)
    assert consumer._fetcher._fetch_max_wait_ms == 3


def test_settings_refuse_a_quiet_time_that_would_spin_the_watcher() -> None:
    with pytest.raises(ValidationError, match="kafka_idle_after_s"):
        CommonSettings(kafka_idle_after_s=0.001)
