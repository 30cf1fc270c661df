"""Many messages of one Kafka consumer in flight at once, their offsets committed in order.

FastStream 0.7's concurrent Kafka subscribers give either concurrency or at-least-once, not
both: ``ConcurrentDefaultSubscriber`` runs handlers concurrently but only with auto-commit
(committed before processing), and ``ConcurrentBetweenPartitionsSubscriber`` runs one consumer
per worker, each with one message at a time. On the chat path the second meant four consumers
per service, each answering one request at a time: four model calls in flight per inference
replica (a real model takes seconds per answer), and four consumers polling the broker.

A windowed subscriber (``windowed``) keeps **one** consumer and up to ``window`` messages in
flight, from any partition and several from the same one. What it commits is what Kafka can
express: per partition, the first offset not yet finished (``OffsetLedger``). A message that
finished early waits, uncommitted, behind a slower one before it; after a crash everything from
that first unfinished offset is delivered again, which handlers keyed by ``event_id`` absorb
(at-least-once, as everywhere else). Commits are coalesced: one commit request in flight per
subscriber, carrying the latest position of every partition that moved (``Committer``).

Only for messages that need no order between them (one chat request does not depend on the one
before it). Documents, configs and lifecycle events keep their sequential subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka.subscriber.usecase import DefaultSubscriber

from tenantry_common.fetchwait import FetchWait

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord

log = logging.getLogger("tenantry.messaging")


class _PartitionLedger:
    """One partition's offsets in flight, in the order they were started."""

    __slots__ = ("finished", "order")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.finished: dict[int, bool] = {}


class OffsetLedger:
    """Which offsets are in flight per partition, and how far each partition may be committed.

    Offsets are started in the order the consumer delivers them (increasing per partition) and
    finished in any order. The committable position of a partition is its first unfinished
    offset, or one past the last finished offset when none is in flight.
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionLedger] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` of ``tp`` is now in flight.

        An offset delivered again while still held (the consumer sought back to it) keeps its
        place: whichever delivery finishes first finishes it.
        """
        ledger = self._partitions.get(tp)
        if ledger is None:
            ledger = self._partitions[tp] = _PartitionLedger()
        if offset in ledger.finished:
            return
        ledger.order.append(offset)
        ledger.finished[offset] = False

    def finish(self, tp: TopicPartition, offset: int) -> int | None:
        """Record that ``offset`` is done; returns the new committable position if it moved.

        An offset this ledger does not hold (its partition was revoked meanwhile) changes
        nothing: the partition's new owner reads it again.
        """
        ledger = self._partitions.get(tp)
        if ledger is None or offset not in ledger.finished:
            return None
        ledger.finished[offset] = True
        moved_to: int | None = None
        while ledger.order and ledger.finished[ledger.order[0]]:
            done = ledger.order.popleft()
            del ledger.finished[done]
            moved_to = done + 1
        return moved_to

    def in_flight(self, tp: TopicPartition) -> int:
        """How many offsets of ``tp`` are started and not yet committable."""
        ledger = self._partitions.get(tp)
        return len(ledger.order) if ledger else 0

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions: their unfinished offsets are the next owner's to read."""
        for tp in partitions:
            self._partitions.pop(tp, None)


class Committer:
    """Commits partitions' positions, one commit request at a time, the latest of each.

    Positions that arrive while a commit is in flight are merged and go in the next one, so a
    burst of finished messages costs a few commit requests, not one each.
    """

    def __init__(self, consumer: Callable[[], AIOKafkaConsumer | None]) -> None:
        self._consumer = consumer
        self._due: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def due(self, tp: TopicPartition, position: int) -> None:
        """Commit ``tp`` up to ``position`` soon (positions only move forward)."""
        if position > self._due.get(tp, -1):
            self._due[tp] = position
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop positions of revoked partitions (the consumer may no longer commit them)."""
        for tp in partitions:
            self._due.pop(tp, None)

    async def flush(self) -> None:
        """Wait until every position handed over so far has been committed (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._due:
            offsets, self._due = self._due, {}
            consumer = self._consumer()
            if consumer is None:
                return
            try:
                assigned = consumer.assignment()
                offsets = {tp: position for tp, position in offsets.items() if tp in assigned}
                if offsets:
                    await consumer.commit(offsets)
            except KafkaError as exc:
                # A rebalance took partitions away: their next owner reads from the last
                # committed position again (handlers are idempotent), which is at-least-once.
                log.warning("offset commit failed", extra={"error_type": type(exc).__name__})


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Clears a windowed subscriber's books for the partitions it loses."""

    def __init__(self, subscriber: WindowedSubscriber, inner: Any) -> None:
        self.subscriber = subscriber
        self.inner = inner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Finished positions go out while the partitions are still ours.
        await self.subscriber.committer.flush()
        self.subscriber.ledger.forget(revoked)
        self.subscriber.committer.forget(revoked)
        if self.inner is not None:
            await self.inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.inner is not None:
            await self.inner.on_partitions_assigned(assigned)


class WindowedSubscriber(DefaultSubscriber):
    """A FastStream Kafka subscriber with up to ``window`` messages in flight (see the module).

    Each message still runs through the whole middleware chain (telemetry, metrics, the
    reliable-consumer middleware that retries and dead-letters); that middleware hands the
    finished record to ``finished`` instead of committing it itself. With a ``FetchWait`` its
    consumer fetches with a longer wait while no message comes (``fetchwait.py``).
    """

    window: int
    ledger: OffsetLedger
    committer: Committer
    fetch_wait: FetchWait | None
    _slots: asyncio.Semaphore
    _in_flight: set[asyncio.Task[None]]

    def _setup_window(self, window: int, fetch_wait: FetchWait | None) -> None:
        self.window = window
        self.fetch_wait = fetch_wait
        self.ledger = OffsetLedger()
        self.committer = Committer(lambda: self.consumer)
        self._slots = asyncio.Semaphore(window)
        self._in_flight = set()
        self._listener = _ForgetRevoked(self, self._listener)

    async def start(self) -> None:
        """Start the consumer, then let its fetch wait follow the traffic."""
        await super().start()
        if self.fetch_wait is not None and self.consumer is not None:
            self.fetch_wait.attach(self.consumer)

    async def consume_one(self, msg: ConsumerRecord[Any, Any]) -> None:
        """Start the message and return (waits only while the window is full)."""
        if self.fetch_wait is not None:
            self.fetch_wait.seen()
        await self._slots.acquire()
        self.ledger.start(TopicPartition(msg.topic, msg.partition), msg.offset)
        task = asyncio.create_task(self._consume_in_window(msg))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _consume_in_window(self, msg: ConsumerRecord[Any, Any]) -> None:
        try:
            await self.consume(msg)
        finally:
            self._slots.release()

    def finished(self, record: ConsumerRecord[Any, Any]) -> None:
        """A message's effects are durable (or it was dead-lettered): commit what is in order."""
        tp = TopicPartition(record.topic, record.partition)
        position = self.ledger.finish(tp, record.offset)
        if position is not None:
            self.committer.due(tp, position)

    async def stop(self) -> None:
        """Let the messages in flight end (up to the graceful timeout), commit, then stop."""
        self.running = False
        if self.fetch_wait is not None:
            self.fetch_wait.detach()
        pending = set(self._in_flight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._outer_config.graceful_timeout)
            for task in late:
                task.cancel()  # not committed: redelivered to the partition's next owner
            if late:
                await asyncio.wait(late)
        await self.committer.flush()
        await super().stop()


def windowed(
    subscriber: object, *, window: int, fetch_wait: FetchWait | None = None
) -> WindowedSubscriber:
    """Turn a subscriber just declared with ``broker.subscriber`` into a windowed one.

    FastStream builds only its own subscriber classes, so this re-classes the plain
    ``DefaultSubscriber`` it returned (one consumer, manual ack policy): the subclass adds
    behaviour and state, not slots, and takes over ``start``, ``consume_one`` and ``stop``.
    Call it before the broker starts.
    """
    if type(subscriber) is not DefaultSubscriber:
        raise TypeError(
            "windowed() takes a plain Kafka subscriber (no batch, max_workers=1), "
            f"got {type(subscriber).__name__}"
        )
    if window < 1:
        raise ValueError("window must be at least 1")
    subscriber.__class__ = WindowedSubscriber
    assert isinstance(subscriber, WindowedSubscriber)
    subscriber._setup_window(window, fetch_wait)
    return subscriber
