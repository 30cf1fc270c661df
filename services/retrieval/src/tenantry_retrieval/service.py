"""Retrieval's logic: ingestion, questions (semantic cache, then search), cache fill, lifecycle.

No broker or HTTP types here: each operation returns the events it wants published
(:class:`Outgoing`), and the handlers publish them. Every output's ``event_id`` is derived from
its input, so a redelivered input yields the same outputs and downstream deduplication holds.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from tenantry_common.events import (
    AuditRecorded,
    AuditStatus,
    AuditType,
    ChatCompleted,
    ChatRequested,
    Citation,
    ContextRetrieved,
    DocumentDeleted,
    DocumentIndexed,
    DocumentSubmitted,
    Event,
    FinishReason,
    LifecycleAction,
    Passage,
    SearchCompleted,
    SearchRequested,
    TenantLifecycleAcknowledged,
    TokenUsage,
    UsageRecorded,
)
from tenantry_common.ids import derived_id, utcnow
from tenantry_common.logging import log_extra
from tenantry_common.messaging import is_transient
from tenantry_common.tenancy import tenant_key
from tenantry_common.topics import (
    AUDIT,
    CHAT_CONTEXT,
    DOCUMENT_STATUS,
    TENANTS_LIFECYCLE,
    USAGE,
    TopicSpec,
)

from tenantry_retrieval.chunking import chunk_text
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.embeddings import Embedder, MicroBatcher, QuestionVectors, Vector
from tenantry_retrieval.metrics import RetrievalMetrics
from tenantry_retrieval.vectorstore import (
    Filter,
    Namespace,
    VectorHit,
    VectorRecord,
    VectorStore,
)

log = logging.getLogger("tenantry.retrieval")

SERVICE = "retrieval"
#: How often (per tenant, per process) cache entries that can never be served again (expired,
#: or made under an older corpus version) are physically removed; until then lookups skip them.
CACHE_PURGE_INTERVAL_S = 600.0
#: A cache lookup takes this many nearest entries of the tenant's cache without a metadata
#: filter and serves the best one in the request's scope. A filtered query costs time linear in
#: the namespace (embedded Chroma: ≈ 60 ms at 10k entries and ≈ 540 ms at 100k, against ≈ 5 ms
#: for this lookup; bench/README.md "Semantic-cache lookup"), and a tenant's cache holds up to a
#: day of answers.
CACHE_CANDIDATES = 8


@dataclass(frozen=True)
class Outgoing:
    """An event to publish: to a topic, or to one partition of it (a reply)."""

    topic: TopicSpec | str
    event: Event
    partition: int | None = None


def corpus_version_key(tenant_id: uuid.UUID) -> str:
    """The Redis key of a tenant's corpus version (bumped by every ingest and delete)."""
    return tenant_key(tenant_id, "retrieval", "corpus_version")


def cache_threshold(*, requested: float, floor: float) -> float:
    """The similarity a cached answer needs: the tenant's, never below the platform floor."""
    return max(requested, floor)


@dataclass(frozen=True)
class CacheScope:
    """What a cached answer must have been made under to be served for a request."""

    model: str
    config_version: int
    corpus_version: int

    def serves(self, hit: VectorHit, *, now: int) -> bool:
        """Whether the entry was made under this scope and has not expired."""
        metadata = hit.metadata
        expires_at = metadata.get("expires_at")
        return (
            metadata.get("model") == self.model
            and metadata.get("config_version") == self.config_version
            and metadata.get("corpus_version") == self.corpus_version
            and isinstance(expires_at, int | float)
            and expires_at > now
        )

    def where(self, *, now: int) -> Filter:
        """The same test as :meth:`serves`, as a store filter."""
        return {
            "model": self.model,
            "config_version": self.config_version,
            "corpus_version": self.corpus_version,
            "expires_at": {"$gt": now},
        }


async def find_cached(
    store: VectorStore,
    *,
    tenant_id: uuid.UUID,
    vector: Sequence[float],
    scope: CacheScope,
    threshold: float,
    now: int,
) -> tuple[VectorHit | None, bool]:
    """The closest entry in scope if it reaches the threshold; and whether a filter was needed.

    The :data:`CACHE_CANDIDATES` nearest entries come unfiltered, and the first of them in scope
    is the closest in scope: every other entry is further away than all of them. Only when none
    is in scope and even the furthest still reaches the threshold (older versions of popular
    questions crowding them out) may a closer one in scope lie beyond, and the store is asked
    again with the scope as its filter.
    """
    hits = await store.query(
        tenant_id=tenant_id, kind=Namespace.CACHE, vector=vector, top_k=CACHE_CANDIDATES
    )
    best = next((hit for hit in hits if scope.serves(hit, now=now)), None)
    filtered = best is None and len(hits) == CACHE_CANDIDATES and hits[-1].score >= threshold
    if filtered:
        hits = await store.query(
            tenant_id=tenant_id,
            kind=Namespace.CACHE,
            vector=vector,
            top_k=1,
            where=scope.where(now=now),
        )
        best = hits[0] if hits else None
    return (best if best is not None and best.score >= threshold else None), filtered


def chunk_id(document_id: uuid.UUID, index: int) -> str:
    """Stable id of a chunk: re-submitting a document overwrites its chunks in place."""
    return f"{document_id}:{index}"


@dataclass
class RetrievalService:
    """The retrieval operations, over a vector store, an embedder and Redis."""

    settings: RetrievalSettings
    store: VectorStore
    embedder: Embedder
    batcher: MicroBatcher
    redis: Redis
    metrics: RetrievalMetrics
    _last_purge: dict[uuid.UUID, float] = field(default_factory=dict)
    question_vectors: QuestionVectors = field(init=False)

    def __post_init__(self) -> None:
        self.question_vectors = QuestionVectors(self.settings.question_vector_cache_size)

    async def _question_vector(self, *, tenant_id: uuid.UUID, text: str, purpose: str) -> Vector:
        """The question's embedding: from the tenant's recent questions, or embedded now."""
        vector = self.question_vectors.get(tenant_id, text)
        if vector is not None:
            self.metrics.question_vectors_reused.labels(purpose).inc()
            return vector
        started = time.perf_counter()
        vector = await self.batcher.embed_one(text)
        self.metrics.embed_seconds.observe(time.perf_counter() - started)
        self.question_vectors.put(tenant_id, text, vector)
        return vector

    # ------------------------------------------------------------------ corpus version

    async def corpus_version(self, *, tenant_id: uuid.UUID) -> int:
        """The tenant's current corpus version (0 before any document)."""
        raw = await self.redis.get(corpus_version_key(tenant_id))
        if raw is None:
            return await self._restore_corpus_version(tenant_id=tenant_id)
        return int(raw)

    async def _bump_corpus_version(self, *, tenant_id: uuid.UUID) -> int:
        # The corpus changes after this call; the version it changes from must exist first,
        # or the change itself would look like a lost key (see _restore_corpus_version).
        return int(await self.redis.incr(corpus_version_key(tenant_id)))

    async def _restore_corpus_version(self, *, tenant_id: uuid.UUID) -> int:
        """A missing version key: 0 for a tenant with nothing stored, else a fresh version.

        Cache entries carry the version they were made under. After Redis lost the key (a
        flush, a failover without persistence), counting again from 0 would come back to
        numbers that older entries hold, and they would be served although the documents
        changed. So when the tenant's documents or cache are not empty the key is restored as
        the current time in milliseconds: larger than any version counted before it (a count
        starts at 0, or at an earlier such time, and grows by one per document change).
        """
        stored = await self.store.count(
            tenant_id=tenant_id, kind=Namespace.DOCUMENTS
        ) or await self.store.count(tenant_id=tenant_id, kind=Namespace.CACHE)
        fresh = int(time.time() * 1000) if stored else 0
        key = corpus_version_key(tenant_id)
        await self.redis.set(key, fresh, nx=True)  # another replica may have restored it first
        raw = await self.redis.get(key)
        return int(raw) if raw is not None else fresh

    async def ingest_document(self, *, event: DocumentSubmitted) -> list[Outgoing]:
        """Chunk, embed and store a document, replacing any earlier version of it."""
        # Established before the corpus changes (a tenant's first document: 0, then 1).
        await self.corpus_version(tenant_id=event.tenant_id)
        chunks = chunk_text(
            event.text,
            size=self.settings.chunk_size_chars,
            overlap=self.settings.chunk_overlap_chars,
        )
        step = self.settings.ingest_embed_batch
        for start in range(0, len(chunks), step):
            # Small encode calls, awaited one by one: questions queue behind one of them at
            # most, never behind a whole large document.
            batch = chunks[start : start + step]
            vectors = await self.embedder.embed(batch)
            records = [
                VectorRecord(
                    id=chunk_id(event.document_id, start + offset),
                    vector=vector,
                    text=text,
                    metadata={
                        "document_id": str(event.document_id),
                        "title": event.title,
                        "chunk_index": start + offset,
                    },
                )
                for offset, (text, vector) in enumerate(zip(batch, vectors, strict=True))
            ]
            await self.store.upsert(
                tenant_id=event.tenant_id, kind=Namespace.DOCUMENTS, records=records
            )
        # Chunks beyond the new length belong to an earlier, longer version of the document.
        await self.store.delete_where(
            tenant_id=event.tenant_id,
            kind=Namespace.DOCUMENTS,
            where={"document_id": str(event.document_id), "chunk_index": {"$gte": len(chunks)}},
        )
        version = await self._bump_corpus_version(tenant_id=event.tenant_id)
        self.metrics.chunks_ingested.labels(str(event.tenant_id)).inc(len(chunks))
        log.info(
            "document ingested",
            extra=log_extra(document_id=str(event.document_id), chunks=len(chunks)),
        )
        indexed = DocumentIndexed(
            event_id=derived_id(event.event_id, "indexed"),
            tenant_id=event.tenant_id,
            document_id=event.document_id,
            chunks=len(chunks),
            corpus_version=version,
        )
        return [
            Outgoing(DOCUMENT_STATUS, indexed),  # the edge shows the document as indexed
            _audit(
                event,
                actor=event.submitted_by,
                resource_type="document",
                resource_id=str(event.document_id),
                action="ingest",
                details={
                    "chunks": len(chunks),
                    "characters": len(event.text),
                    "corpus_version": version,
                },
            ),
        ]

    async def delete_document(self, *, event: DocumentDeleted) -> list[Outgoing]:
        """Remove every chunk of a document."""
        await self.corpus_version(tenant_id=event.tenant_id)  # before the corpus changes
        await self.store.delete_where(
            tenant_id=event.tenant_id,
            kind=Namespace.DOCUMENTS,
            where={"document_id": str(event.document_id)},
        )
        version = await self._bump_corpus_version(tenant_id=event.tenant_id)
        log.info("document deleted", extra=log_extra(document_id=str(event.document_id)))
        return [
            _audit(
                event,
                actor=event.deleted_by,
                resource_type="document",
                resource_id=str(event.document_id),
                action="delete",
                details={"corpus_version": version},
            )
        ]

    # ------------------------------------------------------------------ questions

    async def answer_question(self, *, request: ChatRequested) -> list[Outgoing]:
        """A cached answer (with zero-token usage), or the passages for inference."""
        options = request.options
        version = await self.corpus_version(tenant_id=request.tenant_id)
        if request.deadline_at is not None and request.deadline_at <= utcnow():
            # The edge has given up on it (e.g. a backlog after a restart): no embedding or
            # search; inference ends it at once with ChatFailed and a zero-token usage record,
            # which settles the reservation.
            return [_context(request, [], version)]
        if not options.rag and not options.semantic_cache:
            return [_context(request, [], version), _search_audit(request, 0, False, version)]

        vector = await self._question_vector(
            tenant_id=request.tenant_id, text=search_text(request), purpose="question"
        )

        # A cached answer was made from all of the tenant's documents: never one for a request
        # limited to some. The edge turns the cache off for those, which also keeps their
        # answers out of the cache; this check is for a request from any other producer.
        if options.semantic_cache and not options.document_ids:
            cached = await self._lookup_cache(request=request, vector=vector, version=version)
            if cached is not None:
                self.metrics.cache_hits.labels(str(request.tenant_id)).inc()
                return _cache_hit(request, cached, version)
            self.metrics.cache_misses.labels(str(request.tenant_id)).inc()

        passages: list[Passage] = []
        if options.rag:
            passages = await self._passages(
                tenant_id=request.tenant_id,
                vector=vector,
                top_k=options.top_k,
                document_ids=options.document_ids,
            )
        return [
            _context(request, passages, version),
            _search_audit(request, len(passages), False, version),
        ]

    async def _passages(
        self,
        *,
        tenant_id: uuid.UUID,
        vector: Sequence[float],
        top_k: int,
        document_ids: Sequence[uuid.UUID] = (),
    ) -> list[Passage]:
        """The tenant's best-matching chunks, best first (at most ``top_k_max``), of the
        documents named when any are (the tenant's namespace holds only its own)."""
        started = time.perf_counter()
        where: Filter | None = None
        if document_ids:
            where = {"document_id": {"$in": [str(d) for d in document_ids]}}
        hits = await self.store.query(
            tenant_id=tenant_id,
            kind=Namespace.DOCUMENTS,
            vector=vector,
            top_k=min(top_k, self.settings.top_k_max),
            where=where,
        )
        self.metrics.search_seconds.labels("documents").observe(time.perf_counter() - started)
        return [_passage(hit) for hit in hits]

    async def search(self, *, request: SearchRequested) -> list[Outgoing]:
        """The passages of the tenant's documents nearest the query, for the edge's search
        route (no model asked; nothing billed). Nothing when the edge has given up on it."""
        if request.deadline_at is not None and request.deadline_at <= utcnow():
            return []
        version = await self.corpus_version(tenant_id=request.tenant_id)
        vector = await self._question_vector(
            tenant_id=request.tenant_id, text=request.query, purpose="search"
        )
        passages = await self._passages(
            tenant_id=request.tenant_id,
            vector=vector,
            top_k=request.top_k,
            document_ids=request.document_ids,
        )
        found = SearchCompleted(
            event_id=derived_id(request.request_id, "search-completed"),
            tenant_id=request.tenant_id,
            request_id=request.request_id,
            passages=passages,
            corpus_version=version,
        )
        audit = _audit(
            request,
            actor=request.user_id,
            resource_type="vector_namespace",
            resource_id=str(request.request_id),
            action="search_documents",
            details={
                "passages": len(passages),
                "top_k": request.top_k,
                "documents": len(request.document_ids),
                "corpus_version": version,
            },
            id_source=request.request_id,
        )
        return [
            Outgoing(request.reply_to.topic, found, partition=request.reply_to.partition),
            audit,
        ]

    async def _lookup_cache(
        self, *, request: ChatRequested, vector: Sequence[float], version: int
    ) -> VectorHit | None:
        options = request.options
        started = time.perf_counter()
        hit, filtered = await find_cached(
            self.store,
            tenant_id=request.tenant_id,
            vector=vector,
            scope=CacheScope(
                model=options.model,
                config_version=options.config_version,
                corpus_version=version,
            ),
            threshold=cache_threshold(
                requested=options.cache_similarity_threshold,
                floor=self.settings.cache_similarity_floor,
            ),
            now=int(time.time()),
        )
        self.metrics.search_seconds.labels("cache").observe(time.perf_counter() - started)
        if filtered:
            self.metrics.cache_filtered_lookups.inc()
        return hit

    # ------------------------------------------------------------------ cache fill

    async def fill_cache(self, *, completed: Sequence[ChatCompleted]) -> int:
        """Remember freshly generated answers under their questions; how many were kept.

        One upsert per tenant for the whole batch: embedded Chroma holds the GIL through a
        write, and most of a write's cost is per call (≈ 3.8 to 4.3 ms of CPU with one record,
        ≈ 7.7 ms with ten; bench/HISTORY.md, the figures of 2026-12-05 22:41), so a busy
        tenant's answers in one batch stop the event loop once, not once each. A request
        delivered twice in the batch is kept once (its id is the entry's id).
        """
        now = int(time.time())
        kept: dict[uuid.UUID, dict[str, VectorRecord]] = {}
        versions: dict[uuid.UUID, int] = {}
        for answer in completed:
            if not answer.cacheable:
                continue
            tenant = answer.tenant_id
            if tenant not in versions:
                versions[tenant] = await self.corpus_version(tenant_id=tenant)
            if answer.corpus_version != versions[tenant]:
                continue  # the documents changed since: the entry could never be served
            vector = await self._question_vector(
                tenant_id=tenant, text=answer.question, purpose="cache_fill"
            )
            record = VectorRecord(
                id=str(answer.request_id),  # a redelivered answer overwrites, never duplicates
                vector=vector,
                text=answer.answer,
                metadata={
                    "request_id": str(answer.request_id),
                    "model": answer.model,
                    "config_version": answer.config_version,
                    "corpus_version": answer.corpus_version,
                    "finish_reason": answer.finish_reason.value,
                    "expires_at": now + self.settings.cache_ttl_s,
                    "citations": json.dumps(
                        [c.model_dump(mode="json") for c in answer.citations],
                        separators=(",", ":"),
                    ),
                },
            )
            kept.setdefault(tenant, {})[record.id] = record
        for tenant, records in kept.items():
            await self.store.upsert(
                tenant_id=tenant, kind=Namespace.CACHE, records=list(records.values())
            )
            await self._purge_stale(tenant_id=tenant, now=now, version=versions[tenant])
        return sum(len(records) for records in kept.values())

    async def _purge_stale(self, *, tenant_id: uuid.UUID, now: int, version: int) -> None:
        """Delete the tenant's expired entries and those of older corpus versions, now and then."""
        last = self._last_purge.get(tenant_id, 0.0)
        if time.monotonic() - last < CACHE_PURGE_INTERVAL_S and last:
            return
        self._last_purge[tenant_id] = time.monotonic()
        for where in ({"expires_at": {"$lte": now}}, {"corpus_version": {"$lt": version}}):
            await self.store.delete_where(tenant_id=tenant_id, kind=Namespace.CACHE, where=where)

    # ------------------------------------------------------------------ lifecycle

    async def provision_tenant(self, *, event: Event) -> list[Outgoing]:
        """Acknowledge a new tenant once the vector store has answered.

        Nothing is created here: a namespace comes into being with its first write (the first
        document, the first answer the cache keeps), and a search of one not yet written
        answers empty. Every collection an embedded Chroma holds makes each of its queries
        dearer (docs/operations.md, "Scaling"), so a tenant that never uses retrieval or the
        cache (gateway mode) adds none; Pinecone has always worked this way.
        """
        try:
            await self.store.ping()
        except Exception as exc:
            if is_transient(exc):
                raise
            return [_ack(event, LifecycleAction.PROVISIONED, False, type(exc).__name__)]
        return [_ack(event, LifecycleAction.PROVISIONED, True, "vector store ready")]

    async def offboard_tenant(self, *, event: Event) -> list[Outgoing]:
        """Delete the tenant's namespaces (documents and cache) and corpus version; acknowledge."""
        try:
            for kind in Namespace:
                await self.store.drop(tenant_id=event.tenant_id, kind=kind)
            await self.redis.delete(corpus_version_key(event.tenant_id))
        except Exception as exc:
            if is_transient(exc):
                raise
            return [_ack(event, LifecycleAction.OFFBOARDED, False, type(exc).__name__)]
        self._last_purge.pop(event.tenant_id, None)
        self.question_vectors.forget_tenant(event.tenant_id)
        audit = AuditRecorded(
            event_id=derived_id(event.event_id, "retrieval-audit"),
            tenant_id=event.tenant_id,
            audit_type=AuditType.DELETION,
            source=SERVICE,
            resource_type="vector_namespaces",
            resource_id=str(event.tenant_id),
            action="offboard",
            status=AuditStatus.SUCCESS,
            details={"namespaces": len(Namespace)},
        )
        return [
            Outgoing(AUDIT, audit),
            _ack(event, LifecycleAction.OFFBOARDED, True, "namespaces deleted"),
        ]


# --------------------------------------------------------------------------- event builders


#: How much of the question before a follow-up goes into its search (MiniLM reads 256 tokens).
EARLIER_QUESTION_CHARS = 1_000


def search_text(request: ChatRequested) -> str:
    """What the tenant's documents are searched with: the question, after the one asked before
    it when it is a follow-up ("how long does that take?" alone finds shipping times, not the
    refunds the conversation is about). A follow-up never uses the semantic cache (the edge
    turns it off), so the cache still sees the question alone."""
    earlier = [m.content for m in request.history if m.role == "user"]
    if not earlier:
        return request.question
    return f"{earlier[-1][-EARLIER_QUESTION_CHARS:]}\n{request.question}"


def _passage(hit: VectorHit) -> Passage:
    return Passage(
        document_id=uuid.UUID(str(hit.metadata["document_id"])),
        chunk_index=int(hit.metadata["chunk_index"]),
        title=str(hit.metadata.get("title", "")),
        text=hit.text,
        score=hit.score,
    )


def _context(request: ChatRequested, passages: list[Passage], version: int) -> Outgoing:
    fields = request.model_dump(exclude={"event_id", "event_type", "occurred_at"})
    event = ContextRetrieved(
        **fields,
        event_id=derived_id(request.request_id, "context"),
        passages=passages,
        corpus_version=version,
    )
    return Outgoing(CHAT_CONTEXT, event)


def _finish_reason(stored: object) -> FinishReason:
    """A cache entry's finish reason ("stop" for entries written before it was kept)."""
    try:
        return FinishReason(str(stored))
    except ValueError:
        return FinishReason.STOP


def _cache_hit(request: ChatRequested, hit: VectorHit, version: int) -> list[Outgoing]:
    citations = [Citation.model_validate(c) for c in json.loads(str(hit.metadata["citations"]))]
    answer = ChatCompleted(
        event_id=derived_id(request.request_id, "cached-answer"),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        user_id=request.user_id,
        question=request.question,
        answer=hit.text,
        citations=citations,
        model=request.options.model,
        usage=TokenUsage(prompt_tokens=0, completion_tokens=0),
        cached=True,
        config_version=request.options.config_version,
        corpus_version=version,
        semantic_cache=True,
        # An answer cut at its token limit is served as it was, and says so.
        finish_reason=_finish_reason(hit.metadata.get("finish_reason")),
    )
    usage = UsageRecorded(
        event_id=derived_id(request.request_id, "usage"),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        user_id=request.user_id,
        end_user=request.end_user,
        model=request.options.model,
        prompt_tokens=0,
        completion_tokens=0,
        cached=True,
        reservation=request.reservation,
        source=SERVICE,
    )
    return [
        Outgoing(request.reply_to.topic, answer, partition=request.reply_to.partition),
        Outgoing(USAGE, usage),
        _search_audit(request, 0, True, version),
    ]


def _search_audit(request: ChatRequested, passages: int, cache_hit: bool, version: int) -> Outgoing:
    return _audit(
        request,
        actor=request.user_id,
        resource_type="vector_namespace",
        resource_id=str(request.request_id),
        action="search",
        details={
            "end_user": request.end_user,
            "passages": passages,
            "cache_hit": cache_hit,
            "corpus_version": version,
            "rag": request.options.rag,
            "semantic_cache": request.options.semantic_cache,
        },
        id_source=request.request_id,
    )


def _audit(
    source_event: Event,
    *,
    actor: str,
    resource_type: str,
    resource_id: str,
    action: str,
    details: dict[str, str | int | float | bool | None],
    id_source: uuid.UUID | None = None,
) -> Outgoing:
    event = AuditRecorded(
        event_id=derived_id(id_source or source_event.event_id, "retrieval-audit"),
        tenant_id=source_event.tenant_id,
        audit_type=AuditType.DATA_ACCESS,
        source=SERVICE,
        actor=actor,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        status=AuditStatus.SUCCESS,
        details=details,
    )
    return Outgoing(AUDIT, event)


def _ack(event: Event, action: LifecycleAction, succeeded: bool, detail: str) -> Outgoing:
    ack = TenantLifecycleAcknowledged(
        event_id=derived_id(event.event_id, "retrieval-ack"),
        tenant_id=event.tenant_id,
        service=SERVICE,
        action=action,
        succeeded=succeeded,
        detail=detail,
    )
    return Outgoing(TENANTS_LIFECYCLE, ack)
