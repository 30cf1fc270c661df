"""Batch subscribers that wait a little for a batch worth its transaction.

A batch consumer (metering's ledger, audit's chains) pays a transaction, a commit and its
Redis or chain-head round trips per batch. Under a steady load it fetches whatever arrived while
it wrote the last batch, a few records each time, and pays that per-batch cost nearly per
record. A lingering subscriber (``lingering``) tops a small batch up: after its first records
it keeps fetching until it holds ``min_records`` or ``linger_ms`` has passed since then. The
records still come in offset order per partition and are committed only after the batch has
ended (the reliable-consumer middleware), so nothing changes but when they are written.
"""

from __future__ import annotations

import asyncio
from itertools import chain
from typing import TYPE_CHECKING, Any

from faststream.kafka.subscriber.usecase import BatchSubscriber

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord


class LingeringBatchSubscriber(BatchSubscriber):
    """A FastStream batch subscriber whose small batches wait up to ``linger_s`` for more."""

    min_records: int
    linger_s: float

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord[Any, Any], ...]:
        """A batch: what the consumer holds, topped up towards ``min_records`` for a while."""
        records = list(await super().get_msg(consumer))
        if not records or len(records) >= self.min_records:
            return tuple(records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        most = self.max_records or self.min_records
        while len(records) < self.min_records and self.running:
            left = deadline - loop.time()
            if left <= 0:
                break
            more = await consumer.getmany(
                timeout_ms=max(1, round(left * 1000)), max_records=most - len(records)
            )
            records.extend(chain(*more.values()))
        return tuple(records)


def lingering(subscriber: object, *, min_records: int, linger_ms: int) -> LingeringBatchSubscriber:
    """Turn a batch subscriber just declared with ``broker.subscriber`` into a lingering one.

    As ``inflight.windowed`` does for plain subscribers: FastStream builds only its own
    classes, so this re-classes the ``BatchSubscriber`` it returned (behaviour and state, no
    slots). ``linger_ms`` 0 leaves batches as they come. Call it before the broker starts.
    """
    if type(subscriber) is not BatchSubscriber:
        raise TypeError(f"lingering() takes a Kafka batch subscriber, got {type(subscriber)}")
    if min_records < 1 or linger_ms < 0:
        raise ValueError("min_records must be at least 1 and linger_ms at least 0")
    subscriber.__class__ = LingeringBatchSubscriber
    assert isinstance(subscriber, LingeringBatchSubscriber)
    subscriber.min_records = min_records if linger_ms else 1
    subscriber.linger_s = linger_ms / 1000
    return subscriber
