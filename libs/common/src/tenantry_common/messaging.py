"""The Kafka broker every service uses, with at-least-once consumers and a dead-letter topic.

How a consumed message ends, decided in one place (``ReliableConsumerMiddleware``):

* the handler succeeded → its offset (and only its offset) is committed;
* it failed on the message itself (cannot be parsed, fails validation, a ``PermanentError``, or
  any error still there after ``consumer_max_attempts`` tries) → the original bytes go to
  ``<topic>.dlq`` with the error and source headers, and only then is the offset committed;
* it failed because a dependency is away (connection refused, timeouts), or lost a race in
  Postgres that a retry wins (a deadlock, a serialization failure) → nothing is committed, the
  consumer seeks back to the message and tries it again after a pause, so an outage or a
  conflict never turns good messages into dead letters (a windowed subscriber, ``inflight.py``,
  tries it again in place instead: later messages of its partition may be in flight);
* the DLQ publish itself failed → nothing is committed, the consumer seeks back.

A windowed subscriber's finished messages are handed to its ``OffsetLedger`` instead of being
committed one by one: the partition is committed up to its first unfinished offset.

Startup (``Broker.start``): every subscriber starts at once, so that their consumer groups' joins
overlap instead of following one another.

Shutdown (``stop_broker``): no subscriber starts another message, the messages in flight finish
and commit while their consumers are still group members, then the broker stops.

Subscribers are declared with ``AckPolicy.MANUAL``: FastStream's own acknowledgement would commit
the consumer's whole position (and ``ACK`` commits after exceptions, see faststream#2618); here
the commit names the exact partition and offset, after the handler's effects are durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream._internal.middlewares import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import ValidationError

from tenantry_common.events import ChatCompleted, Event
from tenantry_common.inflight import WindowedSubscriber
from tenantry_common.settings import CommonSettings
from tenantry_common.topics import DLQ_SUFFIX, TopicSpec

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("tenantry.messaging")

#: The tenant of the message being handled, for logs (set from the record's key).
current_tenant: ContextVar[str | None] = ContextVar("current_tenant", default=None)

#: Consumer subscription defaults every service uses.
MANUAL = AckPolicy.MANUAL

DLQ_HEADER_ERROR = "x-dlq-error"
DLQ_HEADER_ERROR_TYPE = "x-dlq-error-type"
DLQ_HEADER_SOURCE_TOPIC = "x-dlq-source-topic"
DLQ_HEADER_SOURCE_PARTITION = "x-dlq-source-partition"
DLQ_HEADER_SOURCE_OFFSET = "x-dlq-source-offset"
DLQ_HEADER_GROUP = "x-dlq-consumer-group"
DLQ_HEADER_ATTEMPTS = "x-dlq-attempts"
DLQ_HEADER_FAILED_AT = "x-dlq-failed-at"

#: On every ChatCompleted: "true" when the answer may go into the tenant's semantic cache
#: (``ChatCompleted.cacheable``: the tenant allows it and it was not itself served from it),
#: else "false". Retrieval's cache fill reads every response; this lets it pass over the rest
#: without decoding them.
CACHEABLE_HEADER = "x-cacheable"


class PermanentError(Exception):
    """The message itself cannot be processed; retrying will not help (dead-letter it)."""


class TransientError(Exception):
    """A dependency is unavailable; the message is fine and must be tried again later."""


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    KafkaConnectionError,
)


#: Postgres's "try the transaction again" errors: serialization_failure, deadlock_detected.
#: Nothing is wrong with the message; the transaction lost a race with another one.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

#: Connection-level errors of the drivers, by qualified name (so this module imports none).
_TRANSIENT_NAMES = frozenset(
    {
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "redis.exceptions.BusyLoadingError",
        "asyncpg.exceptions.CannotConnectNowError",
        "asyncpg.exceptions.ConnectionDoesNotExistError",
        "asyncpg.exceptions.AdminShutdownError",
        "asyncpg.exceptions.TooManyConnectionsError",
        "sqlalchemy.exc.InterfaceError",
        "sqlalchemy.exc.DisconnectionError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether an error is a dependency's outage or a lost race, not a fault of the message.

    The error and what caused it are looked at (SQLAlchemy raises its own error from the
    driver's): a driver's connection error, a connection SQLAlchemy invalidated, or a Postgres
    error whose SQLSTATE says to run the transaction again.
    """
    error: BaseException | None = exc
    for _ in range(6):
        if error is None:
            return False
        if isinstance(error, _TRANSIENT_TYPES):
            return True
        if type(error).__module__ + "." + type(error).__name__ in _TRANSIENT_NAMES:
            return True
        if getattr(error, "connection_invalidated", False) is True:
            return True
        if getattr(error, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        error = error.__cause__ or error.__context__
    return False


class ConsumerMetrics:
    """Counters of how consumed messages ended (one set per registry)."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, ConsumerMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ConsumerMetrics:
        if registry not in cls._by_registry:
            cls._by_registry[registry] = cls(registry)
        return cls._by_registry[registry]

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dead_lettered = Counter(
            "tenantry_messages_dead_lettered_total",
            "Messages sent to a dead-letter topic.",
            ["topic"],
            registry=registry,
        )
        self.retried = Counter(
            "tenantry_message_retries_total",
            "Handler attempts that failed and were tried again.",
            ["topic", "kind"],
            registry=registry,
        )


class ReliableConsumerPolicy:
    """Builds the per-message middleware; holds the broker it dead-letters through."""

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_s: float,
        metrics: ConsumerMetrics,
        transient_pause_s: float = 1.0,
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.transient_pause_s = transient_pause_s
        self.metrics = metrics
        self.broker: KafkaBroker | None = None

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> ReliableConsumerMiddleware:
        return ReliableConsumerMiddleware(msg, context=context, policy=self)


class ReliableConsumerMiddleware(BaseMiddleware):
    """Retries, dead-letters and commits one consumed message (see the module docstring)."""

    def __init__(
        self, msg: Any, /, *, context: ContextRepo, policy: ReliableConsumerPolicy
    ) -> None:
        super().__init__(msg, context=context)
        self.policy = policy
        self.failure: BaseException | None = None
        self.attempts = 0
        #: Batch subscribers: (record, error, attempts) of records to dead-letter.
        self.batch_failures: list[tuple[Any, BaseException, int]] = []
        self._tenant_token: Any = None

    async def on_receive(self) -> None:
        key = getattr(self.msg, "key", None)
        tenant = key.decode("utf-8", "replace") if isinstance(key, bytes) else None
        self._tenant_token = current_tenant.set(tenant)

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        if isinstance(self.msg, tuple):
            return await self._consume_batch(call_next, msg)
        topic = getattr(self.msg, "topic", "?")
        while True:
            self.attempts += 1
            try:
                return await call_next(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    if self._windowed() is None:
                        raise  # handled in after_processed: seek back, never dead-letter
                    # Later offsets of the partition may be in flight: wait here, holding
                    # the message's place (nothing past it is committed meanwhile).
                    self.attempts -= 1
                    await self._pause_for_outage(exc, topic, "message")
                    continue
                if _is_message_fault(exc) or self.attempts >= self.policy.max_attempts:
                    self.failure = exc
                    return None
                self.policy.metrics.retried.labels(topic, "handler").inc()
                await asyncio.sleep(self.policy.backoff_s * 2 ** (self.attempts - 1))

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        try:
            return await self._finish(exc_val)
        finally:
            if self._tenant_token is not None:
                current_tenant.reset(self._tenant_token)

    async def _finish(self, exc_val: BaseException | None) -> bool | None:
        record = self.msg
        if isinstance(exc_val, asyncio.CancelledError | SystemExit | KeyboardInterrupt):
            return False  # shutting down mid-message: not committed, redelivered later
        if isinstance(record, tuple):
            return await self._finish_batch(record, exc_val)
        if exc_val is not None and type(exc_val).__name__ in ("StopConsume", "SubscriberNotFound"):
            return False
        error = self.failure or exc_val
        if error is None:
            await self._commit(record)
            return False
        if exc_val is not None and is_transient(exc_val):
            self.policy.metrics.retried.labels(getattr(record, "topic", "?"), "transient").inc()
            log.warning(
                "transient failure (an outage or a lost race); message will be retried",
                extra={
                    "topic": getattr(record, "topic", None),
                    "error_type": type(exc_val).__name__,
                },
            )
            await self._rewind(record)
            await asyncio.sleep(self.policy.transient_pause_s)
            return True
        while True:
            try:
                await self._dead_letter(record, error)
                break
            except Exception as dlq_exc:
                if self._windowed() is None:
                    log.error(
                        "dead-letter publish failed; message will be retried",
                        extra={"error_type": type(dlq_exc).__name__},
                    )
                    await self._rewind(record)
                    await asyncio.sleep(self.policy.transient_pause_s)
                    return True
                await self._pause_for_outage(dlq_exc, getattr(record, "topic", "?"), "dead-letter")
        await self._commit(record)
        return True

    def _windowed(self) -> WindowedSubscriber | None:
        handler = self.context.get_local("handler_")
        return handler if isinstance(handler, WindowedSubscriber) else None

    async def _pause_for_outage(self, exc: BaseException, topic: str, what: str) -> None:
        self.policy.metrics.retried.labels(topic, "transient").inc()
        log.warning(
            f"transient failure (an outage or a lost race); {what} will be retried in place",
            extra={"topic": topic, "error_type": type(exc).__name__},
        )
        await asyncio.sleep(self.policy.transient_pause_s)

    def _consumer(self, record: Any) -> Any:
        consumer = getattr(record, "consumer", None)
        if consumer is None:
            handler = self.context.get_local("handler_")
            consumer = getattr(handler, "consumer", None)
        return consumer

    async def _commit(self, record: Any) -> None:
        windowed = self._windowed()
        if windowed is not None:
            windowed.finished(record)
            return
        consumer = self._consumer(record)
        if consumer is None or getattr(consumer, "_group_id", None) is None:
            return  # manually assigned partitions (e.g. an edge's reply partition): no group
        tp = TopicPartition(record.topic, record.partition)
        try:
            await consumer.commit({tp: record.offset + 1})
        except KafkaError as exc:
            # A rebalance took the partition away: the new owner re-reads it (handlers are
            # idempotent by event_id), which is exactly at-least-once.
            log.warning("offset commit failed", extra={"error_type": type(exc).__name__})

    async def _rewind(self, record: Any) -> None:
        consumer = self._consumer(record)
        if consumer is not None:
            consumer.seek(TopicPartition(record.topic, record.partition), record.offset)

    # ----------------------------------------------------------------- batch subscribers
    #
    # A ``batch=True`` subscriber hands the middleware a tuple of ConsumerRecords. The batch is
    # tried whole; when it fails on something other than an outage, it is halved (bisected)
    # until the failing records stand alone, so good records are processed and only the bad
    # ones are retried and dead-lettered (the handler must be idempotent: a half that succeeded
    # may run again if a later half hits an outage). Offsets are committed per partition, after
    # the whole batch has ended.

    async def _consume_batch(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        records: tuple[Any, ...] = tuple(self.msg or ())
        self.batch_failures = []
        self.attempts = 1
        try:
            return await call_next(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(records) == 1:
                await self._run_single(call_next, records[0], first_error=exc)
                return None
            self.policy.metrics.retried.labels(records[0].topic, "bisect").inc()
        mid = len(records) // 2
        await self._run_records(call_next, records[:mid])
        await self._run_records(call_next, records[mid:])
        return None

    async def _sub_message(self, records: tuple[Any, ...]) -> Any:
        """A parsed batch message holding only ``records`` (parsed as the subscriber would)."""
        handler = self.context.get_local("handler_")
        item = handler.calls[0]
        message = await item.parser(records)
        message.set_decoder(item.decoder)
        return message

    async def _run_records(
        self, call_next: Callable[[Any], Awaitable[Any]], records: tuple[Any, ...]
    ) -> None:
        if len(records) == 1:
            await self._run_single(call_next, records[0])
            return
        try:
            await call_next(await self._sub_message(records))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
        mid = len(records) // 2
        await self._run_records(call_next, records[:mid])
        await self._run_records(call_next, records[mid:])

    async def _run_single(
        self,
        call_next: Callable[[Any], Awaitable[Any]],
        record: Any,
        *,
        first_error: BaseException | None = None,
    ) -> None:
        attempts = 0
        error = first_error
        if error is not None:
            attempts = 1
        while True:
            if error is not None:
                if _is_message_fault(error) or attempts >= self.policy.max_attempts:
                    self.batch_failures.append((record, error, attempts))
                    return
                self.policy.metrics.retried.labels(record.topic, "handler").inc()
                await asyncio.sleep(self.policy.backoff_s * 2 ** (attempts - 1))
            attempts += 1
            try:
                await call_next(await self._sub_message((record,)))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc

    async def _finish_batch(
        self, records: tuple[Any, ...], exc_val: BaseException | None
    ) -> bool | None:
        if exc_val is not None and type(exc_val).__name__ in ("StopConsume", "SubscriberNotFound"):
            return False
        failures = list(self.batch_failures)
        if exc_val is not None and is_transient(exc_val):
            self.policy.metrics.retried.labels(records[0].topic, "transient").inc()
            log.warning(
                "transient failure (an outage or a lost race); batch will be retried",
                extra={"topic": records[0].topic, "error_type": type(exc_val).__name__},
            )
            await self._rewind_batch(records)
            await asyncio.sleep(self.policy.transient_pause_s)
            return True
        if exc_val is not None:
            # Failed outside the handler (nothing to bisect): each record ends as one would.
            failures = [(r, exc_val, 1) for r in records]
        try:
            for record, error, attempts in failures:
                await self._dead_letter(record, error, attempts=attempts)
        except Exception as dlq_exc:
            log.error(
                "dead-letter publish failed; batch will be retried",
                extra={"error_type": type(dlq_exc).__name__},
            )
            await self._rewind_batch(records)
            await asyncio.sleep(self.policy.transient_pause_s)
            return True
        await self._commit_batch(records)
        return exc_val is not None

    async def _commit_batch(self, records: tuple[Any, ...]) -> None:
        consumer = self._consumer(records[0])
        if consumer is None or getattr(consumer, "_group_id", None) is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed", extra={"error_type": type(exc).__name__})

    async def _rewind_batch(self, records: tuple[Any, ...]) -> None:
        consumer = self._consumer(records[0])
        if consumer is None:
            return
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        for tp, offset in first.items():
            consumer.seek(tp, offset)

    async def _dead_letter(
        self, record: Any, error: BaseException, *, attempts: int | None = None
    ) -> None:
        broker = self.policy.broker
        if broker is None:
            raise RuntimeError("ReliableConsumerPolicy has no broker")
        handler = self.context.get_local("handler_")
        group = getattr(handler, "group_id", None) or ""
        topic = record.topic
        headers = {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for k, v in (record.headers or ())
            if not k.startswith("x-dlq-")
        }
        headers.update(
            {
                DLQ_HEADER_ERROR: describe_error(error),
                DLQ_HEADER_ERROR_TYPE: type(error).__name__,
                DLQ_HEADER_SOURCE_TOPIC: topic,
                DLQ_HEADER_SOURCE_PARTITION: str(record.partition),
                DLQ_HEADER_SOURCE_OFFSET: str(record.offset),
                DLQ_HEADER_GROUP: str(group),
                DLQ_HEADER_ATTEMPTS: str(max(self.attempts if attempts is None else attempts, 1)),
                DLQ_HEADER_FAILED_AT: str(int(time.time() * 1000)),
            }
        )
        await broker.publish(
            record.value if record.value is not None else b"",
            topic=topic + DLQ_SUFFIX,
            key=record.key,
            headers=headers,
        )
        self.policy.metrics.dead_lettered.labels(topic).inc()
        # The place and the error in the text too: captured logs (pytest's) drop the extras.
        log.error(
            f"message dead-lettered: {topic}[{record.partition}]@{record.offset},"
            f" {type(error).__name__}",
            extra={
                "topic": topic,
                "partition": record.partition,
                "offset": record.offset,
                "error_type": type(error).__name__,
            },
        )


async def drain_consumers(broker: KafkaBroker, *, timeout_s: float) -> bool:
    """Start no further message and let those in flight finish and commit; False on timeout.

    Runs before ``broker.stop()``, while every consumer is still a member of its group. The
    broker's own stop cannot be relied on for that: a subscriber with ``max_workers`` > 1
    stops its consumers *before* it waits for the messages in flight (faststream 0.7.8,
    ``ConcurrentBetweenPartitionsSubscriber.stop``), so a message finished during shutdown had
    its effects published but its offset commit failed (``UnknownMemberIdError``) and the
    partition's next owner processed it again. A message fetched after this point is not
    processed and not committed: the next owner reads it.
    """
    subscribers = list(broker.subscribers)
    for subscriber in subscribers:
        subscriber.running = False  # consume() skips messages from now on
    # A started subscriber's lock counts its messages in flight (FastStream's MultiLock).
    locks: list[Any] = [
        lock
        for lock in (getattr(sub, "lock", None) for sub in subscribers)
        if hasattr(lock, "wait_release")
    ]
    await asyncio.gather(*(lock.wait_release(timeout_s) for lock in locks))
    in_flight = sum(lock.qsize for lock in locks)
    if in_flight:
        log.warning(
            "messages still in flight after the graceful timeout; they will be redelivered",
            extra={"in_flight": in_flight},
        )
    return not in_flight


async def stop_broker(broker: KafkaBroker, *, timeout_s: float) -> None:
    """Drain the subscribers (see ``drain_consumers``), then stop the broker."""
    try:
        await drain_consumers(broker, timeout_s=timeout_s)
    finally:
        await broker.stop()


def _is_message_fault(exc: BaseException) -> bool:
    return isinstance(exc, ValidationError | PermanentError | ValueError | TypeError | KeyError)


def describe_error(error: BaseException) -> str:
    """A one-line description of an error, without the payload (validation input is dropped)."""
    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in error.errors(include_input=False)[:10]
        ]
        text = f"{error.error_count()} validation error(s) for {error.title}: " + "; ".join(parts)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        frames = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        if frames:
            text += f" (at {frames[0].filename.rsplit('/', 1)[-1]}:{frames[0].lineno})"
    return text[:2000]


class Broker(KafkaBroker):
    """FastStream's KafkaBroker, but its subscribers start together.

    FastStream starts a broker's subscribers one after another, and aiokafka's start of a group
    consumer returns only once the group has assigned it partitions. A new member's join waits
    half the session timeout on Tansu (≈ 5 s with aiokafka's default of 10 s) and
    ``group.initial.rebalance.delay.ms`` (3 s by default) on Apache Kafka for an empty group,
    so a service with three groups took three of those waits to start, and as long to consume
    again after a crash. Started together, the joins overlap: one wait, however many groups.
    (FastStream starts the consumers of one subscriber with several workers together too.)
    """

    async def start(self) -> None:
        """Connect, then start every subscriber concurrently, then the publishers."""
        await self.connect()
        async with asyncio.TaskGroup() as starting:
            for subscriber in self.subscribers:
                starting.create_task(subscriber.start())
        for publisher in self.publishers:
            await publisher.start()
        self.running = True


def build_broker(
    settings: CommonSettings,
    *,
    registry: CollectorRegistry = REGISTRY,
    tracer_provider: TracerProvider | None = None,
    client_id: str | None = None,
) -> Broker:
    """The service's broker: tracing, metrics, reliable consumers, subscribers started together."""
    policy = ReliableConsumerPolicy(
        max_attempts=settings.consumer_max_attempts,
        backoff_s=settings.consumer_retry_backoff_s,
        metrics=ConsumerMetrics.for_registry(registry),
    )
    broker = Broker(
        settings.kafka_bootstrap_servers,
        client_id=client_id or settings.service_name,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        # Tansu (the local broker) does not support idempotent producers; acks=all still
        # gives durability on Apache Kafka with min.insync.replicas=2.
        acks="all",
        enable_idempotence=False,
        # Every hop publishes and awaits its ack before committing: a linger is paid on every
        # hop of a request (2 ms here cost ≈ 2 ms per publish, 6 publishes per request).
        linger_ms=settings.kafka_linger_ms,
        graceful_timeout=settings.graceful_timeout_s,
        middlewares=(
            KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaPrometheusMiddleware(registry=registry, app_name=settings.service_name),
            policy,
        ),
        logger=logging.getLogger(f"tenantry.{settings.service_name}.broker"),
        log_level=logging.getLevelNamesMapping()[settings.broker_message_log_level],
    )
    policy.broker = broker
    return broker


def subscriber_options(
    settings: CommonSettings, group_id: str, *, low_latency: bool = False
) -> dict[str, Any]:
    """Keyword arguments every group subscriber takes: explicit group, manual (exact) commits.

    ``low_latency`` is for subscribers on a request's path: their fetches wait at most
    ``kafka_fetch_max_wait_ms`` for data. Tansu (the local broker) does not answer a waiting
    fetch when a record arrives, only at the fetch's deadline, so with aiokafka's default
    500 ms every hop waited ≈ 0 to 500 ms (measured: 250 ms of a 255 ms request). Apache Kafka
    answers at once, so there the shorter wait only costs idle fetch round trips; the compose
    file and the k8s ConfigMap set it back to 500 ms. On Tansu the local default, 3 ms, puts
    ≈ 1.5 ms on each hop of a request and costs ≈ 0.15 of a core more at rest than 10 ms did
    (a cache hit's p50 went from 20.4 to 13.7 ms, bench/README.md). A later A/B, five
    fresh-stack points per value over two machines, kept it: 10 ms saved CPU only below full
    load, and one request at a time through retrieval took longer (bench/README.md, "The
    hot-path fetch wait, again").
    """
    options: dict[str, Any] = {
        "group_id": group_id,
        "ack_policy": AckPolicy.MANUAL,
        "auto_offset_reset": "earliest",
        "max_workers": settings.consumer_workers,
    }
    if low_latency:
        options["fetch_max_wait_ms"] = settings.kafka_fetch_max_wait_ms
    return options


async def publish_event(
    broker: KafkaBroker,
    topic: TopicSpec | str,
    event: Event,
    *,
    partition: int | None = None,
    headers: dict[str, str] | None = None,
    key: bytes | None = None,
) -> None:
    """Publish an event keyed by its tenant, so one tenant's events stay in order.

    ``key`` overrides the tenant key where a compacted topic keeps one record per finer key
    (it should still start with the tenant id).
    """
    name = topic.name if isinstance(topic, TopicSpec) else topic
    described = {"event_type": event.event_type, "schema_version": str(event.schema_version)}
    if isinstance(event, ChatCompleted):
        described[CACHEABLE_HEADER] = "true" if event.cacheable else "false"
    await broker.publish(
        event,
        topic=name,
        key=key if key is not None else str(event.tenant_id).encode(),
        partition=partition,
        headers=described | (headers or {}),
    )


async def ensure_topics(
    bootstrap_servers: str,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet (idempotent); returns the names it created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id=f"tenantry-topics-{uuid.uuid4().hex[:6]}",
        request_timeout_ms=int(timeout_s * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in wanted:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=replication_factor,
                            topic_configs=dict(spec.config),
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()
