"""Retrieval end to end on real parts: the session's broker, Redis, embedded Chroma in a temp
directory and the local all-MiniLM-L6-v2 embedder. Events go in on the topics, and what the
service publishes is read back from the topics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from pinecone import Pinecone
from prometheus_client import CollectorRegistry
from retrieval_pinecone_mock import PineconeMock
from tenantry_common.events import (
    AuditRecorded,
    AuditType,
    ChatCompleted,
    ChatMessage,
    ChatOptions,
    ChatRequested,
    Citation,
    ContextRetrieved,
    DocumentDeleted,
    DocumentIndexed,
    DocumentSubmitted,
    Event,
    FinishReason,
    LifecycleAction,
    ReplyTo,
    Reservation,
    SearchCompleted,
    SearchRequested,
    TenantConfig,
    TenantLifecycleAcknowledged,
    TenantOffboarded,
    TenantProvisioned,
    Tier,
    TokenUsage,
    UsageRecorded,
    parse_event,
)
from tenantry_common.ids import derived_id
from tenantry_common.messaging import DLQ_HEADER_ERROR, publish_event
from tenantry_common.testing.lifespan import serving
from tenantry_common.topics import (
    AUDIT,
    CHAT_CONTEXT,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DOCUMENT_STATUS,
    DOCUMENTS,
    TENANTS_LIFECYCLE,
    USAGE,
)
from tenantry_retrieval.app import build_app
from tenantry_retrieval.chunking import chunk_text
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.embeddings import LocalEmbedder
from tenantry_retrieval.service import (
    CACHE_CANDIDATES,
    RetrievalService,
    corpus_version_key,
)
from tenantry_retrieval.vectorstore import (
    Filter,
    MetadataValue,
    Namespace,
    PineconeStore,
    VectorRecord,
    namespace_for,
)

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
REPLY = ReplyTo(topic=CHAT_RESPONSES.name, partition=5)
WAIT_S = 120.0
E = TypeVar("E", bound=Event)


# --------------------------------------------------------------------------- reading topics


class Collector:
    """Reads every topic retrieval writes (and the DLQs) from the start, in the background."""

    TOPICS = (
        CHAT_CONTEXT.name,
        CHAT_RESPONSES.name,
        USAGE.name,
        AUDIT.name,
        TENANTS_LIFECYCLE.name,
        DOCUMENT_STATUS.name,
        CHAT_REQUESTS.dlq,
        DOCUMENTS.dlq,
        CHAT_RESPONSES.dlq,
    )

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *self.TOPICS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.events: list[Event] = []
        self.where: dict[uuid.UUID, tuple[str, int]] = {}  # event_id → (topic, partition)
        self.dead: list[ConsumerRecord[bytes, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()

    async def _run(self) -> None:
        async for record in self.consumer:
            if record.topic.endswith(".dlq"):
                self.dead.append(record)
                continue
            try:
                event = parse_event(record.value)
            except ValueError:
                continue
            self.events.append(event)
            self.where[event.event_id] = (record.topic, record.partition)

    def find(self, cls: type[E], predicate: Callable[[E], bool] = lambda e: True) -> list[E]:
        return [e for e in self.events if isinstance(e, cls) and predicate(e)]

    async def wait_for(
        self, cls: type[E], predicate: Callable[[E], bool], timeout: float = WAIT_S
    ) -> E:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = self.find(cls, predicate)
            if found:
                return found[0]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {cls.__name__} matched in {timeout}s")
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Any], timeout: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbedder]:
    model = await asyncio.to_thread(LocalEmbedder.from_settings, RetrievalSettings())
    yield model
    await model.close()


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="module")
async def app(
    kafka_bootstrap: str,
    redis_url: str,
    embedder: LocalEmbedder,
    registry: CollectorRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FastAPI]:
    settings = RetrievalSettings(
        environment="test",
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        chroma_path=tmp_path_factory.mktemp("chroma"),
        consumer_retry_backoff_s=0.01,
        question_concurrency=4,
    )
    application = build_app(
        settings,
        embedder=embedder,
        registry=registry,
        group_prefix=f"test-{uuid.uuid4().hex[:6]}-",
    )
    async with serving(application):
        yield application


@pytest.fixture(scope="module")
async def collector(kafka_bootstrap: str) -> AsyncIterator[Collector]:
    reader = Collector(kafka_bootstrap)
    await reader.start()
    yield reader
    await reader.stop()


@pytest.fixture
def service(app: FastAPI) -> RetrievalService:
    return app.state.service  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- factories and steps


def chat_request(
    tenant: uuid.UUID,
    question: str,
    *,
    model: str = MODEL,
    config_version: int = 1,
    rag: bool = True,
    semantic_cache: bool = True,
    threshold: float = 0.9,
    end_user: str | None = None,
) -> ChatRequested:
    return ChatRequested(
        tenant_id=tenant,
        request_id=uuid.uuid4(),
        user_id="user-1",
        end_user=end_user,
        question=question,
        reply_to=REPLY,
        options=ChatOptions(
            model=model,
            max_tokens=64,
            temperature=0.0,
            config_version=config_version,
            rag=rag,
            semantic_cache=semantic_cache,
            cache_similarity_threshold=threshold,
            top_k=4,
        ),
        reservation=Reservation(reserved_tokens=500, period_day=date(2025, 1, 2)),
    )


async def ingest(
    app: FastAPI,
    collector: Collector,
    tenant: uuid.UUID,
    text: str,
    *,
    document_id: uuid.UUID | None = None,
    title: str = "Handbook",
) -> AuditRecorded:
    event = DocumentSubmitted(
        tenant_id=tenant,
        document_id=document_id or uuid.uuid4(),
        title=title,
        text=text,
        submitted_by="admin-1",
    )
    await publish_event(app.state.broker, DOCUMENTS, event)
    audit_id = derived_id(event.event_id, "retrieval-audit")
    return await collector.wait_for(AuditRecorded, lambda e: e.event_id == audit_id)


async def ask(app: FastAPI, collector: Collector, request: ChatRequested) -> Event:
    """Publish a question; its outcome: a cached ChatCompleted or a ContextRetrieved."""
    await publish_event(app.state.broker, CHAT_REQUESTS, request)

    def answered(e: Event) -> bool:
        return getattr(e, "request_id", None) == request.request_id and (
            isinstance(e, ContextRetrieved) or (isinstance(e, ChatCompleted) and e.cached)
        )

    return await collector.wait_for(Event, answered)


def completed(
    tenant: uuid.UUID,
    question: str,
    answer: str,
    *,
    corpus_version: int,
    config_version: int = 1,
    semantic_cache: bool = True,
    citations: list[Citation] | None = None,
    finish_reason: FinishReason = FinishReason.STOP,
) -> ChatCompleted:
    return ChatCompleted(
        tenant_id=tenant,
        request_id=uuid.uuid4(),
        user_id="user-1",
        question=question,
        answer=answer,
        citations=citations or [],
        model=MODEL,
        usage=TokenUsage(prompt_tokens=40, completion_tokens=12),
        config_version=config_version,
        corpus_version=corpus_version,
        semantic_cache=semantic_cache,
        finish_reason=finish_reason,
    )


async def cache_count(service: RetrievalService, tenant: uuid.UUID) -> int:
    return await service.store.count(tenant_id=tenant, kind=Namespace.CACHE)


async def fill_cache(
    app: FastAPI, service: RetrievalService, answer: ChatCompleted, *, expect: int
) -> None:
    await publish_event(app.state.broker, CHAT_RESPONSES, answer)

    async def filled() -> bool:
        return await cache_count(service, answer.tenant_id) == expect

    await eventually(filled)


HANDBOOK = (
    "Employee handbook of Acme Corporation.\n\n"
    "Every employee receives twenty-five vacation days per year. Vacation requests go to the "
    "people team at least two weeks ahead.\n\n"
    "Security canary for this workspace: {canary}. Never share it outside the company."
)


def canary(tenant: uuid.UUID) -> str:
    return f"CANARY-{tenant.hex}"


# --------------------------------------------------------------------------- tests


async def test_health_readiness_and_metrics_endpoints(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://retrieval") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"broker": "ok", "redis": "ok", "vector_store": "ok"}
        metrics = await client.get("/metrics")
        assert "llm_cache_hits_total" in metrics.text
        assert "llm_cache_misses_total" in metrics.text


async def test_resubmitting_a_document_replaces_its_chunks_and_deleting_removes_them(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenant, document, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    secret_sentence = f"The launch code word is {uuid.uuid4().hex}."
    paragraphs = [
        f"Paragraph {i}. " + secret_sentence + " Filler about policies and procedures. " * 6
        for i in range(8)
    ]
    text = "\n\n".join(paragraphs)
    settings = service.settings
    expected = len(
        chunk_text(text, size=settings.chunk_size_chars, overlap=settings.chunk_overlap_chars)
    )
    assert expected >= 3

    first = await ingest(app, collector, tenant, text, document_id=document)
    await ingest(app, collector, tenant, "A second document that stays.", document_id=other)
    again = await ingest(app, collector, tenant, text, document_id=document)
    docs = Namespace.DOCUMENTS
    assert await service.store.count(tenant_id=tenant, kind=docs) == expected + 1, "no duplicates"

    await ingest(app, collector, tenant, "Now the document is short.", document_id=document)
    assert await service.store.count(tenant_id=tenant, kind=docs) == 2
    hits = await service.store.query(
        tenant_id=tenant,
        kind=docs,
        vector=(await service.embedder.embed(["Now the document is short."]))[0],
        top_k=10,
    )
    mine = [h for h in hits if h.metadata["document_id"] == str(document)]
    assert [(h.metadata["chunk_index"], h.text) for h in mine] == [
        (0, "Now the document is short.")
    ]

    deletion = DocumentDeleted(tenant_id=tenant, document_id=document, deleted_by="admin-1")
    await publish_event(app.state.broker, DOCUMENTS, deletion)
    deleted_audit = await collector.wait_for(
        AuditRecorded, lambda e: e.event_id == derived_id(deletion.event_id, "retrieval-audit")
    )
    assert await service.store.count(tenant_id=tenant, kind=docs) == 1, "only the other document"
    assert await service.corpus_version(tenant_id=tenant) == 5, "every ingest and delete bumps it"

    for audit in (first, again, deleted_audit):
        assert audit.audit_type == AuditType.DATA_ACCESS
        assert audit.resource_id == str(document)
        assert secret_sentence not in audit.model_dump_json(), "audit events carry no text"
    assert (first.action, first.details["chunks"]) == ("ingest", expected)
    assert deleted_audit.action == "delete"
    # Each stored version told the edge so, with its chunks and the corpus version that has it.
    await collector.wait_for(
        DocumentIndexed, lambda e: e.document_id == document and e.corpus_version == 4
    )
    indexed = [
        e for e in collector.events if isinstance(e, DocumentIndexed) and e.document_id == document
    ]
    assert sorted((e.chunks, e.corpus_version) for e in indexed) == [
        (1, 4),
        (expected, 1),
        (expected, 3),
    ]
    assert all(e.tenant_id == tenant for e in indexed)


async def test_many_tenants_with_near_identical_documents_never_see_each_others_data(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenants = [uuid.uuid4() for _ in range(6)]
    await asyncio.gather(
        *(ingest(app, collector, t, HANDBOOK.format(canary=canary(t))) for t in tenants)
    )
    question = "How many vacation days do employees get?"

    contexts = await asyncio.gather(
        *(ask(app, collector, chat_request(t, question)) for t in tenants)
    )
    for tenant, context in zip(tenants, contexts, strict=True):
        assert isinstance(context, ContextRetrieved), "empty caches: every tenant misses"
        assert context.passages, "the tenant's own handbook is found"
        texts = " ".join(p.text for p in context.passages)
        assert canary(tenant) in texts
        assert all(canary(o) not in texts for o in tenants if o != tenant)

    # Every tenant but the last caches the very same question, model and versions.
    cached_tenants, uncached = tenants[:-1], tenants[-1]
    for tenant in cached_tenants:
        version = await service.corpus_version(tenant_id=tenant)
        answer = completed(tenant, question, f"25 days ({canary(tenant)})", corpus_version=version)
        await fill_cache(app, service, answer, expect=1)

    outcomes = await asyncio.gather(
        *(ask(app, collector, chat_request(t, question)) for t in tenants)
    )
    for tenant, outcome in zip(cached_tenants, outcomes[:-1], strict=True):
        assert isinstance(outcome, ChatCompleted)
        assert outcome.cached
        assert outcome.answer == f"25 days ({canary(tenant)})"
    assert isinstance(outcomes[-1], ContextRetrieved), "other tenants' entries never hit"
    assert canary(uncached) in " ".join(p.text for p in outcomes[-1].passages)

    # Nothing retrieval published for one of these tenants carries another tenant's canary.
    for tenant in tenants:
        published = [e for e in collector.events if e.tenant_id == tenant]
        dumped = " ".join(e.model_dump_json() for e in published)
        assert all(canary(o) not in dumped for o in tenants if o != tenant)


async def test_paraphrases_hit_the_cache_and_different_questions_miss(
    app: FastAPI, collector: Collector, service: RetrievalService, registry: CollectorRegistry
) -> None:
    tenant = uuid.uuid4()
    citation = Citation(document_id=uuid.uuid4(), chunk_index=2, title="Help center", score=0.8)
    original = completed(
        tenant,
        "How do I reset my password?",
        "Open Settings, then Security, then Reset password.",
        corpus_version=0,
        citations=[citation],
    )
    await fill_cache(app, service, original, expect=1)

    for paraphrase, end_user in (
        ("How can I reset my password?", "user-7f3a"),
        ("I forgot my password, how do I reset it?", None),
        ("what's the way to reset my password", None),
    ):
        request = chat_request(tenant, paraphrase, end_user=end_user)
        hit = await ask(app, collector, request)
        assert isinstance(hit, ChatCompleted), paraphrase
        assert hit.cached
        assert hit.answer == original.answer
        assert hit.citations == [citation]
        assert hit.usage == TokenUsage(prompt_tokens=0, completion_tokens=0)
        assert hit.finish_reason is FinishReason.STOP
        assert hit.event_id == derived_id(request.request_id, "cached-answer")
        assert collector.where[hit.event_id] == (REPLY.topic, REPLY.partition)
        usage = await collector.wait_for(
            UsageRecorded, lambda e, r=request: e.request_id == r.request_id
        )
        assert usage.event_id == derived_id(request.request_id, "usage")
        assert (usage.prompt_tokens, usage.completion_tokens, usage.cached) == (0, 0, True)
        assert usage.reservation == request.reservation
        assert usage.source == "retrieval"
        assert usage.end_user == end_user  # the end user the request named, if any
        audit = await collector.wait_for(
            AuditRecorded, lambda e, r=request: e.resource_id == str(r.request_id)
        )
        assert audit.details["end_user"] == end_user

    misses = [
        chat_request(tenant, "How do I change my email address?", end_user="user-7f3a"),
        chat_request(tenant, "What is the refund policy for annual plans?"),
        # The tenant asks for any similarity at all; the platform floor still refuses it.
        chat_request(tenant, "How do I change my email address?", threshold=0.0),
    ]
    for request in misses:
        context = await ask(app, collector, request)
        assert isinstance(context, ContextRetrieved)
        assert context.end_user == request.end_user  # passed on to inference
    assert not collector.find(
        UsageRecorded, lambda e: e.request_id in {r.request_id for r in misses}
    ), "a miss leaves usage to inference"

    label = {"tenant_id": str(tenant)}
    assert registry.get_sample_value("llm_cache_hits_total", label) == 3
    assert registry.get_sample_value("llm_cache_misses_total", label) == 3

    # The cached answers retrieval itself published are not cached again: a later answer on
    # the same reply partition (so read after them) is the only new entry.
    barrier = completed(tenant, "Where is the office?", "Berlin.", corpus_version=0)
    await publish_event(app.state.broker, CHAT_RESPONSES, barrier, partition=REPLY.partition)
    await eventually(lambda: _equals(cache_count(service, tenant), 2))
    await asyncio.sleep(0.5)
    assert await cache_count(service, tenant) == 2

    # An answer cut at its token limit is cached too, and a hit on it says it was cut short.
    cut = completed(
        tenant,
        "Describe the onboarding checklist in full.",
        "First, collect your laptop; then",
        corpus_version=0,
        finish_reason=FinishReason.LENGTH,
    )
    await fill_cache(app, service, cut, expect=3)
    hit = await ask(
        app, collector, chat_request(tenant, "Describe the onboarding checklist in full.")
    )
    assert isinstance(hit, ChatCompleted)
    assert (hit.cached, hit.answer, hit.finish_reason) == (True, cut.answer, FinishReason.LENGTH)


async def test_a_question_is_embedded_once_for_its_cache_fill_and_repeats_but_per_tenant(
    app: FastAPI, collector: Collector, service: RetrievalService, registry: CollectorRegistry
) -> None:
    def embedded() -> float:
        return registry.get_sample_value("retrieval_embed_seconds_count") or 0.0

    def reused(purpose: str) -> float:
        sample = "retrieval_question_vectors_reused_total"
        return registry.get_sample_value(sample, {"purpose": purpose}) or 0.0

    tenant, other = uuid.uuid4(), uuid.uuid4()
    question = f"Which plan includes single sign-on? ({tenant.hex[:6]})"
    before = embedded(), reused("question"), reused("cache_fill")

    assert isinstance(await ask(app, collector, chat_request(tenant, question)), ContextRetrieved)
    assert embedded() == before[0] + 1

    # Inference's answer comes back: it goes into the cache under the vector computed a moment
    # ago for the question, without embedding it again.
    await fill_cache(
        app, service, completed(tenant, question, "The Business plan.", corpus_version=0), expect=1
    )
    assert (embedded(), reused("cache_fill")) == (before[0] + 1, before[2] + 1)

    # The same question again: a cache hit, and no embedding at all.
    hit = await ask(app, collector, chat_request(tenant, question))
    assert isinstance(hit, ChatCompleted)
    assert hit.cached
    assert (embedded(), reused("question")) == (before[0] + 1, before[1] + 1)

    # Another tenant asking the very same text pays its own embedding (no cross-tenant timing
    # signal) and, with an empty cache namespace of its own, gets no cached answer.
    assert isinstance(await ask(app, collector, chat_request(other, question)), ContextRetrieved)
    assert (embedded(), reused("question")) == (before[0] + 2, before[1] + 1)


async def test_a_fill_batch_writes_each_tenant_once_and_a_redelivered_answer_once(
    service: RetrievalService, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, quiet = uuid.uuid4(), uuid.uuid4()
    answers = [
        completed(busy, f"Question {n} of {busy.hex[:6]}?", f"Answer {n}.", corpus_version=0)
        for n in range(3)
    ]
    answers.append(answers[0])  # delivered twice
    answers.append(completed(quiet, "How long is the notice period?", "A month.", corpus_version=0))
    answers.append(
        completed(quiet, "Not for the cache?", "No.", corpus_version=0, semantic_cache=False)
    )
    answers.append(completed(quiet, "An old corpus?", "Stale.", corpus_version=7))

    upserts: list[tuple[uuid.UUID, int]] = []
    upsert = service.store.upsert

    async def counted(**kwargs: Any) -> None:
        if kwargs["kind"] == Namespace.CACHE:
            upserts.append((kwargs["tenant_id"], len(kwargs["records"])))
        await upsert(**kwargs)

    monkeypatch.setattr(service.store, "upsert", counted)
    assert await service.fill_cache(completed=answers) == 4
    assert sorted(upserts) == sorted([(busy, 3), (quiet, 1)])
    assert await cache_count(service, busy) == 3
    assert await cache_count(service, quiet) == 1


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_a_cached_answer_is_not_served_after_the_corpus_or_config_changes(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenant = uuid.uuid4()
    await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    question = "How many vacation days do employees get?"
    version = await service.corpus_version(tenant_id=tenant)
    await fill_cache(
        app, service, completed(tenant, question, "25.", corpus_version=version), expect=1
    )
    assert isinstance(await ask(app, collector, chat_request(tenant, question)), ChatCompleted)

    new_prompt = await ask(app, collector, chat_request(tenant, question, config_version=2))
    assert isinstance(new_prompt, ContextRetrieved), "a new prompt-template version misses"
    other_model = await ask(app, collector, chat_request(tenant, question, model="gpt-4o-mini"))
    assert isinstance(other_model, ContextRetrieved), "another model misses"

    await ingest(app, collector, tenant, "Vacation allowance rises to thirty days in 2026.")
    after_ingest = await ask(app, collector, chat_request(tenant, question))
    assert isinstance(after_ingest, ContextRetrieved), "a changed corpus misses"
    assert after_ingest.corpus_version == version + 1

    # An answer generated against the old corpus arriving late is not cached either.
    stale = completed(tenant, "What is the dress code?", "Casual.", corpus_version=version)
    fresh = completed(tenant, "Is there parking?", "Yes.", corpus_version=version + 1)
    await publish_event(app.state.broker, CHAT_RESPONSES, stale)
    await fill_cache(app, service, fresh, expect=2)


async def test_a_lost_corpus_version_never_brings_an_old_cached_answer_back(
    app: FastAPI, collector: Collector, service: RetrievalService, redis_client: Any
) -> None:
    tenant = uuid.uuid4()
    await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    question = "How many vacation days do employees get?"
    assert await service.corpus_version(tenant_id=tenant) == 1
    await fill_cache(app, service, completed(tenant, question, "25.", corpus_version=1), expect=1)
    assert isinstance(await ask(app, collector, chat_request(tenant, question)), ChatCompleted)
    await ingest(app, collector, tenant, "Vacation allowance rises to thirty days in 2026.")
    assert await service.corpus_version(tenant_id=tenant) == 2

    # Redis loses the key (a flush, a failover without persistence), then the documents change
    # once more: counting again from 0 would reach 1, the version the stale entry was made under.
    await redis_client.delete(corpus_version_key(tenant))
    await ingest(app, collector, tenant, "Unused vacation days expire at the end of March.")
    after = await ask(app, collector, chat_request(tenant, question))
    assert isinstance(after, ContextRetrieved), "the answer cached under version 1 is not served"
    assert after.corpus_version > 2

    # A tenant with nothing stored still starts at 0.
    assert await service.corpus_version(tenant_id=uuid.uuid4()) == 0


async def put_cached(
    service: RetrievalService,
    tenant: uuid.UUID,
    question: str,
    answer: str,
    *,
    corpus_version: int = 1,
    config_version: int = 1,
    model: str = MODEL,
    expires_in_s: int = 3600,
) -> None:
    """Write one cache entry straight into the tenant's cache namespace."""
    [vector] = await service.embedder.embed([question])
    request_id = str(uuid.uuid4())
    metadata: dict[str, MetadataValue] = {
        "request_id": request_id,
        "model": model,
        "config_version": config_version,
        "corpus_version": corpus_version,
        "expires_at": int(time.time()) + expires_in_s,
        "citations": "[]",
    }
    record = VectorRecord(id=request_id, vector=vector, text=answer, metadata=metadata)
    await service.store.upsert(tenant_id=tenant, kind=Namespace.CACHE, records=[record])


class CacheQueries:
    """Records every cache-namespace query the service makes, then runs it on the real store."""

    def __init__(self, service: RetrievalService) -> None:
        self._query = service.store.query
        self.where: list[Filter | None] = []

    async def __call__(self, **kwargs: Any) -> Any:
        if kwargs["kind"] == Namespace.CACHE:
            self.where.append(kwargs.get("where"))
        return await self._query(**kwargs)


@pytest.fixture
async def cache_queries(service: RetrievalService, monkeypatch: pytest.MonkeyPatch) -> CacheQueries:
    spy = CacheQueries(service)
    monkeypatch.setattr(service.store, "query", spy)
    return spy


async def lookup(service: RetrievalService, request: ChatRequested) -> Event:
    """What the service answers a question with: a cached ChatCompleted or a ContextRetrieved."""
    return (await service.answer_question(request=request))[0].event


async def test_a_lookup_in_a_warm_cache_is_one_query_without_a_filter(
    service: RetrievalService, cache_queries: CacheQueries
) -> None:
    tenant = uuid.uuid4()
    await service.redis.set(corpus_version_key(tenant), 1)
    await put_cached(service, tenant, "How do I reset my password?", "Settings, then Security.")
    await put_cached(service, tenant, "Where is the office?", "Berlin.")
    await put_cached(service, tenant, "How do I reset my password?", "Old.", corpus_version=0)

    hit = await lookup(service, chat_request(tenant, "How can I reset my password?"))
    assert isinstance(hit, ChatCompleted)
    assert hit.answer == "Settings, then Security."
    miss = await lookup(service, chat_request(tenant, "What is the refund policy?"))
    assert isinstance(miss, ContextRetrieved)
    assert cache_queries.where == [None, None], "a metadata filter scans the whole namespace"


async def test_older_versions_crowding_the_nearest_entries_do_not_hide_the_one_in_scope(
    service: RetrievalService, cache_queries: CacheQueries, registry: CollectorRegistry
) -> None:
    def filtered() -> float:
        return registry.get_sample_value("retrieval_cache_filtered_lookups_total") or 0.0

    tenant = uuid.uuid4()
    question = "How many vacation days do employees get?"
    await service.redis.set(corpus_version_key(tenant), 1)
    # The very question, cached under every earlier prompt-template version and another model:
    # all closer to it than the one paraphrase cached under the version in use.
    for version in range(2, 2 + CACHE_CANDIDATES):
        await put_cached(service, tenant, question, f"config {version}", config_version=version)
    await put_cached(service, tenant, question, "other model", model="gpt-4o-mini")
    await put_cached(service, tenant, "How many vacation days do staff get?", "25 days.")
    before = filtered()

    hit = await lookup(service, chat_request(tenant, question))
    assert isinstance(hit, ChatCompleted)
    assert hit.answer == "25 days."
    assert filtered() == before + 1
    assert cache_queries.where[0] is None
    scope = dict(cache_queries.where[1] or {})
    expires_at = scope.pop("expires_at")
    assert isinstance(expires_at, dict)
    assert abs(float(expires_at["$gt"]) - time.time()) < 60, "expired entries filtered out"
    assert scope == {"model": MODEL, "config_version": 1, "corpus_version": 1}

    # Under a version nothing was cached for, the crowd is searched and nothing is served.
    miss = await lookup(service, chat_request(tenant, question, config_version=99))
    assert isinstance(miss, ContextRetrieved)
    assert filtered() == before + 2


async def test_an_expired_cached_answer_is_never_served(
    service: RetrievalService, cache_queries: CacheQueries
) -> None:
    tenant = uuid.uuid4()
    question = "Is there parking at the office?"
    await service.redis.set(corpus_version_key(tenant), 1)
    await put_cached(service, tenant, question, "Yes.", expires_in_s=-1)
    assert isinstance(await lookup(service, chat_request(tenant, question)), ContextRetrieved)

    # Expired copies crowding the candidates out: the filtered query skips them too.
    for _ in range(CACHE_CANDIDATES):
        await put_cached(service, tenant, question, "Yes.", expires_in_s=-1)
    assert isinstance(await lookup(service, chat_request(tenant, question)), ContextRetrieved)
    assert cache_queries.where[-1] is not None


async def test_a_fill_purges_entries_that_can_never_be_served_again(
    app: FastAPI, service: RetrievalService
) -> None:
    tenant = uuid.uuid4()
    await service.redis.set(corpus_version_key(tenant), 3)
    await put_cached(service, tenant, "Where is the office?", "Berlin.", corpus_version=1)
    await put_cached(service, tenant, "Where is the office?", "Munich.", corpus_version=2)
    await put_cached(
        service, tenant, "Is there parking?", "Yes.", corpus_version=3, expires_in_s=-1
    )
    await put_cached(service, tenant, "Who cleans?", "A firm.", corpus_version=3, config_version=2)
    assert await cache_count(service, tenant) == 4

    # The tenant's first fill in this process purges: older corpus versions and expired
    # entries go; an entry of another config version may still serve (config versions are
    # only known from requests) and stays until it expires.
    fresh = completed(tenant, "Where is the office?", "Hamburg.", corpus_version=3)
    await fill_cache(app, service, fresh, expect=2)


def _provisioned(tenant: uuid.UUID) -> TenantProvisioned:
    config = TenantConfig(
        tenant_name="Acme",
        tier=Tier.PRO,
        model=MODEL,
        allowed_models=[MODEL],
        temperature=0.2,
        max_tokens_per_request=256,
        system_prompt_template="You are helpful.",
        rate_limit_per_minute=60,
        daily_token_budget=100_000,
        monthly_spend_budget_micros=5_000_000,
        cache_similarity_threshold=0.9,
    )
    return TenantProvisioned(
        tenant_id=tenant, tenant_name="Acme", tier=Tier.PRO, config_version=1, config=config
    )


def _collections(service: RetrievalService) -> set[str]:
    return {c.name for c in service.store._client.list_collections()}  # type: ignore[attr-defined]


async def test_provisioning_creates_nothing_first_writes_create_and_offboarding_deletes(
    app: FastAPI, collector: Collector, service: RetrievalService, redis_client: Any
) -> None:
    tenant, neighbour = uuid.uuid4(), uuid.uuid4()
    await publish_event(app.state.broker, TENANTS_LIFECYCLE, _provisioned(tenant))
    ack = await collector.wait_for(
        TenantLifecycleAcknowledged,
        lambda e: e.tenant_id == tenant and e.action == LifecycleAction.PROVISIONED,
    )
    assert (ack.service, ack.succeeded, ack.detail) == ("retrieval", True, "vector store ready")
    names = {namespace_for(tenant, k) for k in Namespace}
    assert not names & _collections(service), "a tenant that never writes adds no collection"

    # Searched before anything was written: empty answers, and still nothing created.
    fresh = await ask(app, collector, chat_request(tenant, "How many vacation days?"))
    assert isinstance(fresh, ContextRetrieved)
    assert fresh.passages == []
    assert not names & _collections(service)

    for t in (tenant, neighbour):
        await ingest(app, collector, t, HANDBOOK.format(canary=canary(t)))
        assert namespace_for(t, Namespace.DOCUMENTS) in _collections(service)
        assert namespace_for(t, Namespace.CACHE) not in _collections(service)
        answer = completed(t, "Vacation days?", "25.", corpus_version=1)
        await fill_cache(app, service, answer, expect=1)
    assert names <= _collections(service), "the first document and the first kept answer"

    offboarded = TenantOffboarded(tenant_id=tenant, tenant_name="Acme", reason="contract ended")
    await publish_event(app.state.broker, TENANTS_LIFECYCLE, offboarded)
    ack = await collector.wait_for(
        TenantLifecycleAcknowledged,
        lambda e: e.tenant_id == tenant and e.action == LifecycleAction.OFFBOARDED,
    )
    assert (ack.service, ack.succeeded) == ("retrieval", True)
    assert ack.event_id == derived_id(offboarded.event_id, "retrieval-ack")
    assert not names & _collections(service)
    assert await redis_client.exists(corpus_version_key(tenant)) == 0
    for kind in Namespace:
        assert await service.store.count(tenant_id=tenant, kind=kind) == 0
        assert await service.store.count(tenant_id=neighbour, kind=kind) == 1, "neighbour intact"
    deletion = await collector.wait_for(
        AuditRecorded, lambda e: e.tenant_id == tenant and e.audit_type == AuditType.DELETION
    )
    assert deletion.action == "offboard"


async def test_provisioning_is_refused_when_the_store_refuses_pinecone_mock(
    service: RetrievalService, pinecone_mock_server: PineconeMock
) -> None:
    """Pinecone's cloud cannot run here: its mock, once with a wrong key, once with the right."""
    tenant = uuid.uuid4()

    def with_key(api_key: str) -> RetrievalService:
        index = Pinecone(api_key=api_key).Index(host=pinecone_mock_server.host)
        return dataclasses.replace(service, store=PineconeStore(index))

    refused = await with_key("not-the-key").provision_tenant(event=_provisioned(tenant))
    [ack] = [item.event for item in refused]
    assert isinstance(ack, TenantLifecycleAcknowledged)
    assert (ack.succeeded, ack.detail) == (False, "UnauthorizedError")

    [accepted] = await with_key(pinecone_mock_server.api_key).provision_tenant(
        event=_provisioned(tenant)
    )
    assert isinstance(accepted.event, TenantLifecycleAcknowledged)
    assert accepted.event.succeeded
    assert pinecone_mock_server.requests[-1].path == "/describe_index_stats", "it asked the store"


async def test_feature_flags_turn_retrieval_and_the_cache_off(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenant = uuid.uuid4()
    await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    question = "How many vacation days do employees get?"
    await fill_cache(app, service, completed(tenant, question, "25.", corpus_version=1), expect=1)

    no_rag = await ask(app, collector, chat_request(tenant, "Who approves vacation?", rag=False))
    assert isinstance(no_rag, ContextRetrieved)
    assert no_rag.passages == []
    assert no_rag.question == "Who approves vacation?"

    nothing = await ask(
        app, collector, chat_request(tenant, question, rag=False, semantic_cache=False)
    )
    assert isinstance(nothing, ContextRetrieved), "cache off: even an exact question misses"
    assert nothing.passages == []

    rag_only = await ask(app, collector, chat_request(tenant, question, semantic_cache=False))
    assert isinstance(rag_only, ContextRetrieved)
    assert rag_only.passages
    assert rag_only.options.semantic_cache is False, "the request's fields travel on"

    not_allowed = completed(
        tenant, "Is there parking?", "Yes.", corpus_version=1, semantic_cache=False
    )
    allowed = completed(tenant, "Where is the office?", "Berlin.", corpus_version=1)
    await publish_event(app.state.broker, CHAT_RESPONSES, not_allowed)
    await fill_cache(app, service, allowed, expect=2)  # read after not_allowed: same partition


async def test_context_carries_every_request_field_and_passages_for_citations(
    app: FastAPI, collector: Collector
) -> None:
    tenant = uuid.uuid4()
    audit = await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    request = chat_request(tenant, "How many vacation days do employees get?", semantic_cache=False)
    context = await ask(app, collector, request)
    assert isinstance(context, ContextRetrieved)
    request_fields = request.model_dump(exclude={"event_id", "event_type", "occurred_at"})
    assert context.model_dump(include=set(request_fields)) == request_fields
    assert context.corpus_version == 1
    passage = context.passages[0]
    assert str(passage.document_id) == audit.resource_id
    assert (passage.chunk_index, passage.title) == (0, "Handbook")
    assert 0.0 < passage.score <= 1.0
    search = await collector.wait_for(
        AuditRecorded,
        lambda e: e.tenant_id == tenant and e.action == "search",
    )
    assert search.details["passages"] == len(context.passages)
    assert "vacation" not in search.model_dump_json()


async def test_a_follow_up_is_searched_with_the_question_before_it(
    app: FastAPI, collector: Collector
) -> None:
    """ "How long does that take?" alone is nearest to shipping times; after a question about
    refunds it must find the refund policy."""
    tenant = uuid.uuid4()
    for title, text in (
        (
            "Refunds",
            "Refund policy: items may be returned within 30 days of delivery for a full refund. "
            "Refunds are processed within 5 business days.",
        ),
        (
            "Shipping",
            "Shipping: standard orders take 3 to 5 days to arrive; express shipping takes one day.",
        ),
    ):
        await ingest(app, collector, tenant, text, title=title)
    alone = chat_request(tenant, "How long does that take?", semantic_cache=False)
    follow_up = alone.model_copy(
        update={
            "request_id": uuid.uuid4(),
            "history": [
                ChatMessage(role="user", content="What is your refund policy?"),
                ChatMessage(role="assistant", content="You may return items."),
            ],
        }
    )
    first = {}
    for request in (alone, follow_up):
        context = await ask(app, collector, request)
        assert isinstance(context, ContextRetrieved)
        first[request.request_id] = context.passages[0].title
        assert context.question == "How long does that take?"  # the question is unchanged
    assert (first[alone.request_id], first[follow_up.request_id]) == ("Shipping", "Refunds")


async def test_a_request_past_its_deadline_is_passed_on_without_search_or_cache(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenant = uuid.uuid4()
    await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    question = "How many vacation days do employees get?"
    answer = completed(tenant, question, "Twenty-five.", corpus_version=1)
    await fill_cache(app, service, answer, expect=1)
    request = chat_request(tenant, question).model_copy(
        update={"deadline_at": datetime.now(UTC) - timedelta(seconds=1)}
    )
    outcome = await ask(app, collector, request)
    assert isinstance(outcome, ContextRetrieved), "no cached answer for an abandoned request"
    assert outcome.passages == []
    # The same question in time is answered from the cache: only the deadline made the difference.
    fresh = await ask(app, collector, chat_request(tenant, question))
    assert isinstance(fresh, ChatCompleted)
    assert fresh.cached


def search_request(
    tenant: uuid.UUID,
    query: str,
    *,
    top_k: int = 4,
    deadline_at: datetime | None = None,
    document_ids: list[uuid.UUID] | None = None,
) -> SearchRequested:
    return SearchRequested(
        tenant_id=tenant,
        request_id=uuid.uuid4(),
        user_id="admin-1",
        query=query,
        top_k=top_k,
        document_ids=document_ids or [],
        reply_to=REPLY,
        deadline_at=deadline_at,
    )


async def search(app: FastAPI, collector: Collector, request: SearchRequested) -> SearchCompleted:
    await publish_event(app.state.broker, CHAT_REQUESTS, request)
    return await collector.wait_for(SearchCompleted, lambda e: e.request_id == request.request_id)


async def test_a_search_returns_only_the_tenants_own_passages_best_first_and_is_audited(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenants = [uuid.uuid4() for _ in range(4)]
    await asyncio.gather(
        *(ingest(app, collector, t, HANDBOOK.format(canary=canary(t))) for t in tenants)
    )
    query = "What is the security canary of this workspace?"
    requests = [search_request(t, query) for t in tenants]
    found = await asyncio.gather(*(search(app, collector, r) for r in requests))
    for tenant, request, result in zip(tenants, requests, found, strict=True):
        assert result.tenant_id == tenant
        texts = " ".join(p.text for p in result.passages)
        assert canary(tenant) in texts
        assert all(canary(o) not in texts for o in tenants if o != tenant)
        scores = [p.score for p in result.passages]
        assert scores == sorted(scores, reverse=True)
        assert result.corpus_version == await service.corpus_version(tenant_id=tenant)
        # Answered on the edge replica's partition, like a chat answer.
        assert collector.where[result.event_id] == (CHAT_RESPONSES.name, REPLY.partition)
        audit_id = derived_id(request.request_id, "retrieval-audit")
        audit = await collector.wait_for(AuditRecorded, lambda e, i=audit_id: e.event_id == i)
        assert (audit.tenant_id, audit.action, audit.actor) == (
            tenant,
            "search_documents",
            "admin-1",
        )
        assert audit.details == {
            "passages": len(result.passages),
            "top_k": 4,
            "documents": 0,
            "corpus_version": result.corpus_version,
        }
        assert query not in audit.model_dump_json(), "audit events carry no query text"
        # Nothing goes to inference or metering: no model is asked.
        assert not collector.find(
            ContextRetrieved, lambda e, r=request: e.request_id == r.request_id
        )
        assert not collector.find(UsageRecorded, lambda e, r=request: e.request_id == r.request_id)

    one = await search(app, collector, search_request(tenants[0], query, top_k=1))
    assert len(one.passages) == 1
    assert canary(tenants[0]) in one.passages[0].text


async def test_a_request_limited_to_some_documents_searches_only_those(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    handbook, refunds, others = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await ingest(
        app, collector, tenant, HANDBOOK.format(canary=canary(tenant)), document_id=handbook
    )
    await ingest(
        app,
        collector,
        tenant,
        "Refund policy: items may be returned within 30 days of delivery.",
        document_id=refunds,
        title="Refunds",
    )
    await ingest(app, collector, other, HANDBOOK.format(canary=canary(other)), document_id=others)
    question = "How many vacation days do employees get?"

    def found(result: SearchCompleted | ContextRetrieved) -> set[uuid.UUID]:
        return {p.document_id for p in result.passages}

    everything = await search(app, collector, search_request(tenant, question, top_k=10))
    assert found(everything) == {handbook, refunds}
    assert everything.passages[0].document_id == handbook, "the handbook answers it best"
    scoped = search_request(tenant, question, top_k=10, document_ids=[refunds])
    only = await search(app, collector, scoped)
    assert found(only) == {refunds}
    audit_id = derived_id(scoped.request_id, "retrieval-audit")
    audit = await collector.wait_for(AuditRecorded, lambda e: e.event_id == audit_id)
    assert audit.details["documents"] == 1

    # A chat request limited to the refunds document: its context holds only that document,
    # and the tenant's cache is not consulted although it holds an answer to the question.
    version = await service.corpus_version(tenant_id=tenant)
    await fill_cache(
        app, service, completed(tenant, question, "25 days.", corpus_version=version), expect=1
    )
    request = chat_request(tenant, question)
    request = request.model_copy(
        update={"options": request.options.model_copy(update={"document_ids": [refunds]})}
    )
    outcome = await ask(app, collector, request)
    assert isinstance(outcome, ContextRetrieved), "never a cached answer for a limited request"
    assert found(outcome) == {refunds}
    assert outcome.options.document_ids == [refunds]
    unlimited = await ask(app, collector, chat_request(tenant, question))
    assert isinstance(unlimited, ChatCompleted), "the same question unlimited hits the cache"

    # Another tenant's document id names nothing in this tenant's namespace.
    crossing = await search(
        app, collector, search_request(tenant, question, top_k=10, document_ids=[others])
    )
    assert crossing.passages == []


async def test_a_search_past_its_deadline_is_dropped(app: FastAPI, collector: Collector) -> None:
    tenant = uuid.uuid4()
    await ingest(app, collector, tenant, HANDBOOK.format(canary=canary(tenant)))
    stale = search_request(
        tenant, "vacation days", deadline_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    await publish_event(app.state.broker, CHAT_REQUESTS, stale)
    fresh = await search(app, collector, search_request(tenant, "vacation days"))
    assert fresh.passages
    await asyncio.sleep(0.5)
    assert not collector.find(SearchCompleted, lambda e: e.request_id == stale.request_id)
    assert not collector.find(AuditRecorded, lambda e: e.resource_id == str(stale.request_id))


async def test_malformed_events_are_dead_lettered_and_the_consumers_go_on(
    app: FastAPI, collector: Collector, kafka_bootstrap: str
) -> None:
    tenant = uuid.uuid4()
    key = str(tenant).encode()
    missing_options = chat_request(tenant, "Hi?").model_dump(mode="json")
    del missing_options["options"]
    no_results = search_request(tenant, "Hi?").model_dump(mode="json") | {"top_k": 0}
    future_document = DocumentSubmitted(
        tenant_id=tenant, document_id=uuid.uuid4(), title="t", text="x", submitted_by="a"
    ).model_dump(mode="json") | {"schema_version": 99}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for topic, value in (
            (CHAT_REQUESTS.name, b"{not json"),
            (CHAT_REQUESTS.name, json.dumps(missing_options).encode()),
            (CHAT_REQUESTS.name, json.dumps(no_results).encode()),
            (DOCUMENTS.name, b"\x00\x01garbage"),
            (DOCUMENTS.name, json.dumps(future_document).encode()),
            # Headerless bytes on the responses: the cache fill's batch decodes them.
            (CHAT_RESPONSES.name, b"\x00 no answer"),
        ):
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    # The next good messages of the same tenant (same partitions) are processed.
    await ingest(app, collector, tenant, "Still working.")
    good = await ask(app, collector, chat_request(tenant, "Still working?"))
    assert isinstance(good, ContextRetrieved)

    async def all_dead() -> bool:
        return len([r for r in collector.dead if r.key == key]) == 6

    await eventually(all_dead)
    dead = [r for r in collector.dead if r.key == key]
    assert sorted(r.topic for r in dead) == sorted(
        [CHAT_REQUESTS.dlq] * 3 + [DOCUMENTS.dlq] * 2 + [CHAT_RESPONSES.dlq]
    )
    errors = [dict(r.headers)[DLQ_HEADER_ERROR].decode() for r in dead]
    assert any("options" in e for e in errors)
    assert any("unsupported schema_version 99" in e for e in errors)


async def test_a_large_document_does_not_hold_up_another_tenants_question(
    app: FastAPI, collector: Collector, service: RetrievalService
) -> None:
    big_tenant, asking_tenant = uuid.uuid4(), uuid.uuid4()
    await ingest(app, collector, asking_tenant, HANDBOOK.format(canary=canary(asking_tenant)))
    paragraphs = [
        f"Clause {i}. The supplier shall deliver goods of batch {i} within {i % 30 + 1} days; "
        "late delivery incurs a penalty of one percent per day, capped at ten percent. " * 4
        for i in range(120)
    ]
    big = DocumentSubmitted(
        tenant_id=big_tenant,
        document_id=uuid.uuid4(),
        title="Master supply agreement",
        text="\n\n".join(paragraphs),
        submitted_by="admin-1",
    )
    total = len(chunk_text(big.text, size=800, overlap=120))
    await publish_event(app.state.broker, DOCUMENTS, big)

    async def ingest_started() -> bool:
        return await service.store.count(tenant_id=big_tenant, kind=Namespace.DOCUMENTS) > 0

    await eventually(ingest_started)
    answer = await ask(
        app, collector, chat_request(asking_tenant, "Vacation days?", semantic_cache=False)
    )
    assert isinstance(answer, ContextRetrieved)
    stored = await service.store.count(tenant_id=big_tenant, kind=Namespace.DOCUMENTS)
    assert stored < total, "the question was answered while the large document was still ingesting"
    await collector.wait_for(
        AuditRecorded, lambda e: e.event_id == derived_id(big.event_id, "retrieval-audit")
    )
    assert await service.store.count(tenant_id=big_tenant, kind=Namespace.DOCUMENTS) == total
