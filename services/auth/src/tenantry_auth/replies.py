"""Routing chat answers back to the replica that holds the HTTP request.

Each edge replica leases one partition of ``chat.responses.v1`` in Redis (``SET NX`` with a TTL
it keeps refreshing) and reads only that partition, by manual assignment (no consumer group),
from its end at start. Requests carry ``reply_to.partition`` = the leased partition; answers are
dispatched to waiting requests by ``request_id``. No replica reads another replica's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenantry_common.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatResponseEvent,
    FailureReason,
    SearchCompleted,
)
from tenantry_common.fetchwait import FetchWait
from tenantry_common.ids import PLATFORM_TENANT_ID
from tenantry_common.topics import CHAT_RESPONSES

log = logging.getLogger("tenantry.auth.replies")

_RESPONSE = TypeAdapter[ChatDelta | ChatCompleted | ChatFailed | SearchCompleted](ChatResponseEvent)

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: What ends a request's answers: a chat's answer or failure, or a search's passages.
Final = ChatCompleted | ChatFailed | SearchCompleted


def _ids_of(raw: bytes) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The request and tenant ids an unreadable response names, where it names them."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None, None
    if not isinstance(data, dict):
        return None, None
    ids: list[uuid.UUID | None] = []
    for name in ("request_id", "tenant_id"):
        try:
            ids.append(uuid.UUID(str(data.get(name))))
        except ValueError:
            ids.append(None)
    return ids[0], ids[1]


class NoReplyPartition(Exception):
    """This replica holds no reply partition (Redis unreachable or all leased)."""


@dataclass
class PendingReply:
    """Answers for one request, as they arrive; deltas are released in ``seq`` order."""

    request_id: uuid.UUID
    queue: asyncio.Queue[ChatDelta | Final] = field(default_factory=asyncio.Queue)
    _next_seq: int = 0
    _held: dict[int, ChatDelta] = field(default_factory=dict)

    def offer(self, event: ChatDelta | Final) -> None:
        if isinstance(event, ChatDelta):
            if event.seq < self._next_seq:
                return  # a redelivered piece
            self._held[event.seq] = event
            while self._next_seq in self._held:
                self.queue.put_nowait(self._held.pop(self._next_seq))
                self._next_seq += 1
        else:
            self.queue.put_nowait(event)

    async def events(self, *, timeout_s: float) -> AsyncIterator[ChatDelta | Final]:
        """Deltas in order then the final event; TimeoutError when the deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            event = await asyncio.wait_for(self.queue.get(), remaining)
            yield event
            if not isinstance(event, ChatDelta):
                return


class ReplyRouter:
    """Holds a partition lease, reads that partition, and dispatches answers."""

    def __init__(
        self,
        *,
        redis: Redis,
        bootstrap_servers: str,
        namespace: str,
        lease_ttl_s: float,
        partitions: int = CHAT_RESPONSES.partitions,
        topic: str = CHAT_RESPONSES.name,
        fetch_max_wait_ms: int = 3,
        idle_fetch_max_wait_ms: int = 0,
        idle_after_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.bootstrap_servers = bootstrap_servers
        self.namespace = namespace
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.partitions = partitions
        self.topic = topic
        # Short fetches while a request awaits its answer or answers arrive, longer ones after.
        self.fetch_wait = FetchWait(
            wait_ms=fetch_max_wait_ms,
            idle_wait_ms=idle_fetch_max_wait_ms,
            idle_after_s=idle_after_s,
            busy=lambda: bool(self._pending),
        )
        self.owner = uuid.uuid4().hex
        self.partition: int | None = None
        self._pending: dict[uuid.UUID, PendingReply] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)
        self._assigned = asyncio.Event()
        self._leased = asyncio.Event()

    def _key(self, partition: int) -> str:
        return f"{self.namespace}:{partition}"

    async def _acquire(self) -> int | None:
        for n in range(self.partitions):
            if await self.redis.set(self._key(n), self.owner, nx=True, px=self.lease_ttl_ms):
                return n
        return None

    async def start(self, *, wait_s: float = 10.0) -> None:
        """Start the lease keeper and the reader; wait (bounded) until a partition is read."""
        self._tasks = [
            asyncio.create_task(self._keep_lease(), name="reply-lease"),
            asyncio.create_task(self._read(), name="reply-reader"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._assigned.wait(), wait_s)

    async def stop(self) -> None:
        """Stop reading and give the lease back."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self.partition is not None:
            with contextlib.suppress(RedisError):
                await self._release(keys=[self._key(self.partition)], args=[self.owner])

    @property
    def ready(self) -> bool:
        return self.partition is not None and self._assigned.is_set()

    async def _keep_lease(self) -> None:
        interval = self.lease_ttl_ms / 3000
        while True:
            try:
                if self.partition is None:
                    self.partition = await self._acquire()
                    if self.partition is None:
                        log.error("no free reply partition; chat is unavailable on this replica")
                    else:
                        self._leased.set()
                        log.info("reply partition leased", extra={"partition": self.partition})
                elif not await self._refresh(
                    keys=[self._key(self.partition)], args=[self.owner, self.lease_ttl_ms]
                ):
                    # Lost (Redis restarted empty, or was away longer than the TTL). Take the
                    # same partition back when it is free: the reader never stopped, so no
                    # answer was missed. (Re-leasing it without this, the reader kept running
                    # while ``_assigned`` stayed cleared: chat answered 503 for good.)
                    if await self.redis.set(
                        self._key(self.partition), self.owner, nx=True, px=self.lease_ttl_ms
                    ):
                        log.warning(
                            "reply partition lease lost and taken back",
                            extra={"partition": self.partition},
                        )
                        await asyncio.sleep(interval)
                        continue
                    log.error("reply partition lease lost", extra={"partition": self.partition})
                    self.partition = None
                    self._leased.clear()
                    self._assigned.clear()
                    continue
            except RedisError as exc:
                log.warning("reply lease refresh failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(interval)

    async def _read(self) -> None:
        while True:
            try:
                await self._read_assigned()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "reply reader failed; restarting", extra={"error_type": type(exc).__name__}
                )
                self._assigned.clear()
                await asyncio.sleep(1.0)

    async def _read_assigned(self) -> None:
        await self._leased.wait()
        partition = self.partition
        if partition is None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            client_id=f"edge-replies-{partition}",
            # Every answer waits on this fetch; the local broker answers a fetch only at its
            # deadline (aiokafka's default 500 ms), see tenantry_common.messaging.
            fetch_max_wait_ms=self.fetch_wait.wait_ms,
        )
        self._consumer = consumer
        await consumer.start()
        self.fetch_wait.attach(consumer)
        try:
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)  # resolve the end now: answers after this are ours
            self._assigned.set()
            while self.partition == partition and self._assigned.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    self._dispatch(record.value)
        finally:
            self.fetch_wait.detach()
            self._consumer = None
            await consumer.stop()

    def _dispatch(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            event = _RESPONSE.validate_json(raw)
        except ValidationError as exc:
            self._unreadable(raw, exc)
            return
        pending = self._pending.get(event.request_id)
        if pending is not None:
            pending.offer(event)

    def _unreadable(self, raw: bytes, exc: ValidationError) -> None:
        """A response this replica cannot read (a contract version it does not know yet, or a
        malformed record; it stays on the topic). A request waiting for it fails now instead
        of at its deadline: its answer would never be read."""
        request_id, tenant_id = _ids_of(raw)
        pending = self._pending.get(request_id) if request_id is not None else None
        # Where and what kind, never the values (they may hold the answer's text).
        problems = sorted({f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors()})
        log.warning(
            "unreadable chat response",
            extra={
                "request_id": str(request_id) if request_id else None,
                "waiting": pending is not None,
                "problems": problems[:5],
            },
        )
        if pending is not None and request_id is not None:
            pending.offer(
                ChatFailed(
                    tenant_id=tenant_id or PLATFORM_TENANT_ID,
                    request_id=request_id,
                    reason=FailureReason.INTERNAL,
                    message="the answer to this request could not be read by the edge (an "
                    "event it does not understand); it was not delivered",
                )
            )

    def reply_partition(self) -> int:
        """The partition answers must be sent to, or ``NoReplyPartition``."""
        if not self.ready or self.partition is None:
            raise NoReplyPartition
        return self.partition

    def register(self, request_id: uuid.UUID) -> PendingReply:
        """Start collecting answers for a request (before it is published)."""
        pending = PendingReply(request_id)
        self._pending[request_id] = pending
        self.fetch_wait.seen()
        return pending

    def forget(self, request_id: uuid.UUID) -> None:
        """Stop collecting answers for a request (answered, failed or abandoned)."""
        self._pending.pop(request_id, None)
