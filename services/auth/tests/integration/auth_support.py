"""Fixtures for the edge against the real broker, Postgres and Redis: an in-process edge, two
edge processes (uvicorn) sharing the same stores, a capture of audit events, and a stand-in for
retrieval+inference that answers chat requests on their reply partition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tenantry_auth.app import build_app, migrate
from tenantry_auth.config import Settings
from tenantry_common.auth import Principal, Role
from tenantry_common.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    Citation,
    ContextRetrieved,
    Event,
    FailureReason,
    FinishReason,
    FunctionCall,
    LifecycleAction,
    Passage,
    SearchCompleted,
    SearchRequested,
    TenantLifecycleAcknowledged,
    TokenUsage,
    ToolCall,
    parse_event,
)
from tenantry_common.ids import utcnow
from tenantry_common.localstack import free_port
from tenantry_common.settings import ModelSpec, default_catalogue
from tenantry_common.testing.lifespan import serving

OPERATOR_SECRET = "test-operator-secret-0123456789"
#: A catalogue model (of the in-process edge's settings) whose server answers only in text.
TEXT_ONLY_MODEL = "text-only"
ROOT = Path(__file__).resolve().parents[4]
LOG_DIR = ROOT / "var" / "log" / "tests"
SERVICES = ("retrieval", "inference", "metering", "audit")
#: The citation the stand-in answers with when a question says "[cite]".
CITED = Citation(
    document_id=uuid.UUID("0e4f5c2a-7d1b-4c8e-9a3f-2b6d8e1c5a70"),
    chunk_index=2,
    title="Refund policy",
    score=0.87,
)


@pytest.fixture(scope="session")
async def auth_dsn(make_database) -> str:
    dsn = await make_database("auth")
    await migrate(Settings(postgres_dsn=dsn, environment="test"))
    return dsn


@pytest.fixture(scope="session")
def lease_namespace() -> str:
    return f"tenantry:test:{uuid.uuid4().hex[:8]}:reply-partition"


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce the given settings in a subprocess."""
    return {
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TENANTRY_POSTGRES_DSN": settings.postgres_dsn,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_BOOTSTRAP_OPERATOR_SECRET": OPERATOR_SECRET,
        "TENANTRY_REPLY_LEASE_NAMESPACE": settings.reply_lease_namespace,
        "TENANTRY_CHAT_DEADLINE_S": str(settings.chat_deadline_s),
        "TENANTRY_ONBOARDING_TIMEOUT_S": str(settings.onboarding_timeout_s),
        "TENANTRY_METERING_URL": settings.metering_url,
        "TENANTRY_AUDIT_URL": settings.audit_url,
        "TENANTRY_LOG_LEVEL": "WARNING",
    }


@pytest.fixture(scope="session")
def edge_settings(
    kafka_bootstrap: str, auth_dsn: str, redis_url: str, lease_namespace: str
) -> Settings:
    return Settings(
        environment="test",
        kafka_bootstrap_servers=kafka_bootstrap,
        postgres_dsn=auth_dsn,
        redis_url=redis_url,
        bootstrap_operator_secret=OPERATOR_SECRET,
        reply_lease_namespace=lease_namespace,
        chat_deadline_s=4.0,
        max_upload_bytes=3_000_000,
        onboarding_timeout_s=25.0,
        onboarding_sweep_s=1.0,
        consumer_retry_backoff_s=0.05,
        models=default_catalogue()
        | {
            TEXT_ONLY_MODEL: ModelSpec(
                base_url="http://127.0.0.1:9/v1",
                input_price_micros_per_mtok=1,
                output_price_micros_per_mtok=1,
                context_window=4096,
                response_formats="text",
            )
        },
    )


@pytest.fixture(scope="session")
async def edge_app(edge_settings: Settings) -> AsyncIterator[Any]:
    app = build_app(edge_settings, migrate_on_start=False)
    async with serving(app, startup_timeout=60, shutdown_timeout=30):
        yield app


@pytest.fixture(scope="session")
async def client(edge_app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=edge_app, client=("203.0.113.7", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=30) as c:
        yield c


# --------------------------------------------------------------------------- kafka helpers


@pytest.fixture(scope="session")
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await p.start()
    yield p
    await p.stop()


async def send(
    producer: AIOKafkaProducer, topic: str, event: Event, partition: int | None = None
) -> None:
    await producer.send_and_wait(
        topic,
        event.model_dump_json().encode(),
        key=str(event.tenant_id).encode(),
        partition=partition,
    )


@dataclass
class Collector:
    """Every event read from some topics since the session started."""

    events: list[Event] = field(default_factory=list)

    def of(self, kind: type[Event], **match: Any) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())
        ]

    async def wait_for(
        self, kind: type[Event], timeout: float = 15.0, count: int = 1, **match: Any
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(kind, **match)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {count} {kind.__name__} matching {match} in {timeout}s")


@pytest.fixture(scope="session")
async def topics_seen(kafka_bootstrap: str) -> AsyncIterator[Collector]:
    """Events on audit, documents, config and lifecycle topics (read from the beginning)."""
    collector = Collector()
    consumer = AIOKafkaConsumer(
        "audit.v1",
        "documents.v1",
        "tenants.config.v1",
        "tenants.lifecycle.v1",
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-collector-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()

    async def run() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(Exception):
                        collector.events.append(parse_event(record.value))

    task = asyncio.create_task(run())
    yield collector
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await consumer.stop()


@dataclass
class Responder:
    """Plays retrieval+inference: answers every ChatRequested on its reply partition, and
    every ContextRetrieved (what the edge sends in gateway mode) of a tenant ``onboard`` made
    (other packages' tests in the same session publish ContextRetrieved for real inference).

    A question containing ``[silent]`` is never answered; ``[fail]`` gets a ChatFailed
    (model_unavailable), ``[rejected]`` one for a request the provider refused as invalid,
    ``[unreadable]`` one of a contract version the edge does not know;
    ``[length]`` an answer cut at its token limit; ``[call]`` (with tools offered) a call of
    the tool the request forces, else of its first, and no text.
    """

    producer: AIOKafkaProducer
    requests: list[ChatRequested | ContextRetrieved] = field(default_factory=list)
    searches: list[SearchRequested] = field(default_factory=list)
    tenants: set[uuid.UUID] = field(default_factory=set)

    async def answer(self, request: ChatRequested | ContextRetrieved) -> None:
        self.requests.append(request)
        if "[silent]" in request.question:
            return
        topic, partition = request.reply_to.topic, request.reply_to.partition
        common = {"tenant_id": request.tenant_id, "request_id": request.request_id}
        if "[fail]" in request.question:
            await send(
                self.producer,
                topic,
                ChatFailed(
                    **common, reason=FailureReason.MODEL_UNAVAILABLE, message="model is down"
                ),
                partition,
            )
            return
        if "[unreadable]" in request.question:  # a final answer of a version the edge lacks
            failed = ChatFailed(**common, reason=FailureReason.INTERNAL, message="from the future")
            raw = json.loads(failed.model_dump_json()) | {"schema_version": 99}
            await self.producer.send_and_wait(
                topic,
                json.dumps(raw).encode(),
                key=str(request.tenant_id).encode(),
                partition=partition,
            )
            return
        if "[rejected]" in request.question:
            said = "the model rejected the request as invalid (HTTP 400: context_length_exceeded)"
            failed = ChatFailed(**common, reason=FailureReason.REQUEST_REJECTED, message=said)
            await send(self.producer, topic, failed, partition)
            return
        calls = []
        if "[call]" in request.question and (tools := request.options.tools) is not None:
            name = tools.function or tools.tools[0].function.name
            calls = [ToolCall(id="call_1", function=FunctionCall(name=name, arguments='{"x": 1}'))]
        pieces = [] if calls else ["The answer ", "is ", "forty-two."]
        if request.stream:
            # Sent out of order on purpose: the edge orders deltas by seq.
            order = [1, 0, 2] if "[shuffle]" in request.question else list(range(len(pieces)))
            for i in order:
                await send(
                    self.producer, topic, ChatDelta(**common, seq=i, delta=pieces[i]), partition
                )
                await asyncio.sleep(0.05)
        await send(
            self.producer,
            topic,
            ChatCompleted(
                **common,
                user_id=request.user_id,
                question=request.question,
                answer="".join(pieces),
                model=request.options.model,
                usage=TokenUsage(prompt_tokens=11, completion_tokens=5),
                config_version=request.options.config_version,
                corpus_version=0,
                citations=[CITED] if "[cite]" in request.question else [],
                finish_reason=FinishReason.TOOL_CALLS
                if calls
                else FinishReason.LENGTH
                if "[length]" in request.question
                else FinishReason.STOP,
                tool_calls=calls,
            ),
            partition,
        )

    def for_tenant(self, tenant_id: uuid.UUID) -> list[ChatRequested | ContextRetrieved]:
        return [r for r in self.requests if r.tenant_id == tenant_id]

    async def search(self, request: SearchRequested) -> None:
        """Plays retrieval's search: one passage naming the query and its tenant, per top_k
        up to three, best first; ``[silent]`` gets no answer and ``[fail]`` a ChatFailed."""
        self.searches.append(request)
        if "[silent]" in request.query:
            return
        common = {"tenant_id": request.tenant_id, "request_id": request.request_id}
        answer: Event
        if "[fail]" in request.query:
            answer = ChatFailed(**common, reason=FailureReason.INTERNAL, message="store is down")
        else:
            passages = [
                Passage(
                    document_id=CITED.document_id,
                    chunk_index=i,
                    title=CITED.title,
                    text=f"passage {i} for {request.query} of {request.tenant_id}",
                    score=0.9 - i / 10,
                )
                for i in range(min(request.top_k, 3))
            ]
            answer = SearchCompleted(**common, passages=passages, corpus_version=7)
        await send(self.producer, request.reply_to.topic, answer, request.reply_to.partition)


@pytest.fixture(scope="session")
async def responder(kafka_bootstrap: str, producer: AIOKafkaProducer) -> AsyncIterator[Responder]:
    r = Responder(producer)
    consumer = AIOKafkaConsumer(
        "chat.requests.v1",
        "chat.context.v1",
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-responder-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()

    answering: set[asyncio.Task[None]] = set()

    async def run() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    event = parse_event(record.value)
                    if isinstance(event, SearchRequested):
                        task = asyncio.create_task(r.search(event))
                        answering.add(task)
                        task.add_done_callback(answering.discard)
                        continue
                    assert isinstance(event, ChatRequested | ContextRetrieved)
                    if isinstance(event, ContextRetrieved) and event.tenant_id not in r.tenants:
                        continue
                    task = asyncio.create_task(r.answer(event))
                    answering.add(task)
                    task.add_done_callback(answering.discard)

    task = asyncio.create_task(run())
    yield r
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await consumer.stop()


# --------------------------------------------------------------------------- tenants


async def get_token(c: httpx.AsyncClient, client_id: str, secret: str) -> str:
    r = await c.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def member_principal(tenant_id: uuid.UUID, subject: str = "client-1") -> Principal:
    """A tenant member as a verified token would make it, for calling the service directly."""
    now = utcnow()
    return Principal(
        tenant_id=tenant_id,
        subject=subject,
        role=Role.MEMBER,
        issuer="tenantry-edge",
        issued_at=now,
        expires_at=now,
        raw_token="x",
    )


@pytest.fixture(scope="session")
async def operator_token(client: httpx.AsyncClient) -> str:
    return await get_token(client, "operator", OPERATOR_SECRET)


async def ack_all(
    producer: AIOKafkaProducer,
    tenant_id: uuid.UUID,
    action: LifecycleAction,
    *,
    services=SERVICES,
    succeeded: bool = True,
) -> None:
    for name in services:
        await send(
            producer,
            "tenants.lifecycle.v1",
            TenantLifecycleAcknowledged(
                tenant_id=tenant_id,
                service=name,
                action=action,
                succeeded=succeeded,
                detail="" if succeeded else "disk full",
            ),
        )


async def wait_status(
    c: httpx.AsyncClient, token: str, tenant_id: uuid.UUID | str, status: str, timeout: float = 45.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await c.get(f"/v1/tenants/{tenant_id}", headers=bearer(token))
        body = r.json()
        if r.status_code == 200 and body["status"] == status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"tenant {tenant_id} never reached {status}: {body}")


@dataclass
class TenantHandle:
    tenant_id: uuid.UUID
    admin_client_id: str
    admin_secret: str
    admin_token: str
    member_token: str


@pytest.fixture(scope="session")
def onboard(client, operator_token, producer, responder) -> Callable[..., Any]:
    """``await onboard(tier=...)`` → an active tenant with an admin and a member token."""

    async def make(tier: str = "pro", name: str | None = None) -> TenantHandle:
        r = await client.post(
            "/v1/tenants",
            json={
                "name": name or f"t-{uuid.uuid4().hex[:6]}",
                "tier": tier,
                "admin_contact": "a@b.test",
            },
            headers=bearer(operator_token),
        )
        assert r.status_code == 201, r.text
        created = r.json()
        tenant_id = uuid.UUID(created["tenant_id"])
        responder.tenants.add(tenant_id)
        await ack_all(producer, tenant_id, LifecycleAction.PROVISIONED)
        await wait_status(client, operator_token, tenant_id, "active")
        admin = await get_token(client, created["client_id"], created["client_secret"])
        m = await client.post(
            "/v1/clients", json={"name": "frontend", "role": "member"}, headers=bearer(admin)
        )
        assert m.status_code == 201, m.text
        member = await get_token(client, m.json()["client_id"], m.json()["client_secret"])
        return TenantHandle(
            tenant_id, created["client_id"], created["client_secret"], admin, member
        )

    return make


# --------------------------------------------------------------------------- edge processes


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]


async def start_replica(settings: Settings, extra_env: dict[str, str] | None = None) -> Replica:
    """Start ``python -m tenantry_auth`` and wait (without blocking the event loop, so the
    in-process edge keeps heartbeating its consumer group) until it is ready."""
    port = free_port()
    env = (
        os.environ | settings_env(settings) | {"TENANTRY_HTTP_PORT": str(port)} | (extra_env or {})
    )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (LOG_DIR / f"edge-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tenantry_auth"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    replica = Replica(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"edge replica exited with {proc.returncode}; see {log.name}")
            try:
                if (await c.get(f"{replica.url}/readyz")).status_code == 200:
                    return replica
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    await stop_replica(replica)
    raise TimeoutError(f"edge replica not ready; see {log.name}")


async def stop_replica(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.terminate()
        try:
            await asyncio.to_thread(replica.proc.wait, 30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            await asyncio.to_thread(replica.proc.wait)


@pytest.fixture(scope="session")
async def replicas(edge_settings: Settings, edge_app) -> AsyncIterator[list[Replica]]:
    """Two edge processes sharing Postgres, Redis and the broker with the in-process edge."""
    started = list(await asyncio.gather(start_replica(edge_settings), start_replica(edge_settings)))
    try:
        yield started
    finally:
        await asyncio.gather(*(stop_replica(r) for r in started))
