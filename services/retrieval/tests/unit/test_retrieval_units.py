"""Micro-batching, namespace derivation, the cache threshold floor, settings validation and which
responses the cache fill decodes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from pydantic import ValidationError
from tenantry_common.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    Event,
    FailureReason,
    TokenUsage,
)
from tenantry_common.messaging import publish_event
from tenantry_common.topics import CHAT_RESPONSES
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.embeddings import MicroBatcher, QuestionVectors
from tenantry_retrieval.handlers import decode_cache_fills, may_fill_cache
from tenantry_retrieval.service import CacheScope, cache_threshold
from tenantry_retrieval.vectorstore import (
    MetadataValue,
    Namespace,
    TenantRequired,
    VectorHit,
    namespace_for,
)

pytestmark = pytest.mark.unit


class CountingEmbedder:
    """A fake embedder that records each call's texts."""

    def __init__(self, fail: bool = False, parallel_calls: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.parallel_calls = parallel_calls
        self.running = 0
        self.most_running = 0
        #: Cleared, every call waits until it is set again (a model that is busy).
        self.free = asyncio.Event()
        self.free.set()

    @property
    def name(self) -> str:
        return "fake"

    @property
    def dimension(self) -> int:
        return 2

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0)
            await self.free.wait()
        finally:
            self.running -= 1
        if self.fail:
            raise RuntimeError("model exploded")
        return [[float(len(t)), 1.0] for t in texts]

    async def close(self) -> None:
        pass


async def test_a_burst_of_concurrent_questions_is_embedded_in_one_call() -> None:
    fake = CountingEmbedder()
    batcher = MicroBatcher(fake, window_s=0.02, max_batch=64)
    texts = [f"question {'?' * i}" for i in range(10)]
    vectors = await asyncio.gather(*(batcher.embed_one(t) for t in texts))
    assert len(fake.calls) == 1
    assert sorted(fake.calls[0]) == sorted(texts)
    assert vectors == [[float(len(t)), 1.0] for t in texts], "each caller gets its own vector"


async def test_a_burst_larger_than_max_batch_is_split() -> None:
    fake = CountingEmbedder()
    batcher = MicroBatcher(fake, window_s=0.05, max_batch=4)
    await asyncio.gather(*(batcher.embed_one(str(i)) for i in range(10)))
    assert [len(c) for c in fake.calls] == [4, 4, 2]


async def test_an_embedding_failure_reaches_every_caller_of_the_batch() -> None:
    batcher = MicroBatcher(CountingEmbedder(fail=True), window_s=0.01, max_batch=8)
    results = await asyncio.gather(
        *(batcher.embed_one(str(i)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


async def turns(n: int) -> None:
    """Let the event loop run ``n`` times (no clock involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_lone_question_waits_for_no_window_by_default() -> None:
    fake = CountingEmbedder()
    batcher = MicroBatcher(fake, window_s=0.0, max_batch=32)
    task = asyncio.ensure_future(batcher.embed_one("alone"))
    await turns(5)
    assert task.done(), "embedded within a few loop turns, with no timer in between"
    assert fake.calls == [["alone"]]


async def test_questions_arriving_while_the_embedder_is_busy_share_the_next_call() -> None:
    fake = CountingEmbedder()
    batcher = MicroBatcher(fake, window_s=0.0, max_batch=32)
    fake.free.clear()
    first = asyncio.ensure_future(batcher.embed_one("first"))
    await turns(3)
    assert fake.calls == [["first"]], "the idle embedder takes the first question at once"
    later = [asyncio.ensure_future(batcher.embed_one(f"later {i}")) for i in range(5)]
    await turns(3)
    assert len(fake.calls) == 1, "nothing else starts while the one encode call runs"
    fake.free.set()
    await asyncio.gather(first, *later)
    assert fake.calls[1:] == [[f"later {i}" for i in range(5)]]
    assert fake.most_running == 1


async def test_waiting_questions_go_max_batch_at_a_time() -> None:
    fake = CountingEmbedder()
    batcher = MicroBatcher(fake, window_s=0.0, max_batch=2)
    fake.free.clear()
    first = asyncio.ensure_future(batcher.embed_one("first"))
    await turns(3)
    later = [asyncio.ensure_future(batcher.embed_one(str(i))) for i in range(5)]
    await turns(3)
    fake.free.set()
    await asyncio.gather(first, *later)
    assert [len(c) for c in fake.calls] == [1, 2, 2, 1]


async def test_an_embedder_with_parallel_calls_gets_that_many_at_once() -> None:
    fake = CountingEmbedder(parallel_calls=2)
    batcher = MicroBatcher(fake, window_s=0.0, max_batch=32)
    fake.free.clear()
    a = asyncio.ensure_future(batcher.embed_one("a"))
    await turns(3)
    b = asyncio.ensure_future(batcher.embed_one("b"))
    await turns(3)
    c = [asyncio.ensure_future(batcher.embed_one(f"c{i}")) for i in range(3)]
    await turns(3)
    assert fake.calls == [["a"], ["b"]]
    assert fake.running == 2
    fake.free.set()
    await asyncio.gather(a, b, *c)
    assert fake.calls[2:] == [["c0", "c1", "c2"]]
    assert fake.most_running == 2


async def test_a_failed_call_does_not_strand_the_questions_waiting_behind_it() -> None:
    fake = CountingEmbedder(fail=True)
    batcher = MicroBatcher(fake, window_s=0.0, max_batch=32)
    fake.free.clear()
    first = asyncio.ensure_future(batcher.embed_one("first"))
    await turns(3)
    later = asyncio.ensure_future(batcher.embed_one("later"))
    await turns(3)
    fake.free.set()
    results = await asyncio.gather(first, later, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert fake.calls == [["first"], ["later"]]


def test_namespaces_differ_by_tenant_and_purpose() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    names = {namespace_for(t, k) for t in (a, b) for k in Namespace}
    assert len(names) == 4
    assert namespace_for(a, Namespace.DOCUMENTS) == f"tenant-{a.hex}-docs"
    assert namespace_for(a, Namespace.CACHE) == f"tenant-{a.hex}-cache"


@pytest.mark.parametrize("bad", [None, "", "acme", "../other", str(uuid.uuid4())])
def test_namespace_needs_a_uuid_tenant(bad: object) -> None:
    with pytest.raises(TenantRequired):
        namespace_for(bad, Namespace.DOCUMENTS)  # type: ignore[arg-type]


def test_cache_threshold_never_goes_below_the_platform_floor() -> None:
    assert cache_threshold(requested=0.1, floor=0.85) == 0.85
    assert cache_threshold(requested=0.95, floor=0.85) == 0.95


def test_a_cache_scope_serves_only_unexpired_entries_made_under_it() -> None:
    scope = CacheScope(model="m", config_version=2, corpus_version=5)
    made: dict[str, MetadataValue] = {
        "model": "m",
        "config_version": 2,
        "corpus_version": 5,
        "expires_at": 1_000,
    }

    def hit(**changes: MetadataValue) -> VectorHit:
        return VectorHit(id="1", score=0.99, text="a", metadata=made | changes)

    assert scope.serves(hit(), now=999)
    assert scope.serves(hit(config_version=2.0, corpus_version=5.0), now=999), "Pinecone floats"
    assert not scope.serves(hit(), now=1_000), "expired"
    assert not scope.serves(hit(model="other"), now=0)
    assert not scope.serves(hit(config_version=1), now=0)
    assert not scope.serves(hit(corpus_version=4), now=0)
    assert not scope.serves(hit(expires_at="never"), now=0)
    assert not scope.serves(VectorHit(id="1", score=1.0, text="a", metadata={}), now=0)
    assert scope.where(now=7) == {
        "model": "m",
        "config_version": 2,
        "corpus_version": 5,
        "expires_at": {"$gt": 7},
    }


def test_settings_refuse_overlap_not_smaller_than_chunk_size() -> None:
    with pytest.raises(ValidationError, match="chunk_overlap_chars"):
        RetrievalSettings(chunk_size_chars=100, chunk_overlap_chars=100)


def test_settings_refuse_pinecone_without_a_key() -> None:
    with pytest.raises(ValidationError, match="PINECONE_API_KEY"):
        RetrievalSettings(vector_backend="pinecone")


def test_settings_defaults_serve_on_8001_with_embedded_chroma_under_var() -> None:
    settings = RetrievalSettings()
    assert settings.http_port == 8001
    assert settings.vector_backend == "chroma"
    assert settings.chroma_path.parts[-2:] == ("var", "chroma")
    assert settings.chroma_http_url is None


def test_settings_default_to_one_torch_thread_for_the_embedder() -> None:
    # Beside the other services on the same cores, a second intra-op thread cut the questions
    # answered per second to a third to a half (bench/HISTORY.md, "Full RAG: one torch thread").
    assert RetrievalSettings().embed_threads == 1


def test_settings_default_to_the_onnx_runtime_for_the_local_model() -> None:
    # The same vectors as torch for 2.5x less CPU for a lone question (bench/HISTORY.md,
    # "Full RAG on onnxruntime").
    settings = RetrievalSettings()
    assert settings.embed_runtime == "onnx"
    assert settings.onnx_cache_dir.parts[-2:] == ("var", "models")


def test_settings_default_to_int8_weights_and_refuse_int8_on_torch_with_the_fix() -> None:
    # A question in half the time, recall within ≈ 2 points (bench/README.md, "Embedding
    # precision").
    assert RetrievalSettings().embed_precision == "int8"
    assert RetrievalSettings(embed_runtime="torch", embed_precision="fp32").embed_runtime == "torch"
    with pytest.raises(ValidationError, match="TENANTRY_EMBED_PRECISION=fp32"):
        RetrievalSettings(embed_runtime="torch")


def test_question_vectors_are_kept_per_tenant_and_evicted_least_recently_used_first() -> None:
    vectors = QuestionVectors(max_entries=2)
    a, b = uuid.uuid4(), uuid.uuid4()
    vectors.put(a, "refund policy?", [0.6, 0.8])
    assert vectors.get(a, "refund policy?") == [0.6, 0.8]
    assert vectors.get(b, "refund policy?") is None, "another tenant's entry is never served"
    assert vectors.get(a, "Refund policy?") is None, "the exact text only"
    vectors.put(a, "shipping?", [1.0, 0.0])
    assert vectors.get(a, "refund policy?") is not None  # now the most recently used
    vectors.put(b, "warranty?", [0.0, 1.0])
    assert len(vectors) == 2
    assert vectors.get(a, "shipping?") is None, "the least recently used entry made room"
    assert vectors.get(a, "refund policy?") == [0.6, 0.8]


def test_question_vectors_forget_an_offboarded_tenant_and_can_be_turned_off() -> None:
    vectors = QuestionVectors(max_entries=10)
    a, b = uuid.uuid4(), uuid.uuid4()
    vectors.put(a, "q1", [1.0])
    vectors.put(a, "q2", [1.0])
    vectors.put(b, "q1", [1.0])
    vectors.forget_tenant(a)
    assert (vectors.get(a, "q1"), vectors.get(a, "q2")) == (None, None)
    assert vectors.get(b, "q1") == [1.0]
    off = QuestionVectors(max_entries=0)
    off.put(a, "q1", [1.0])
    assert off.get(a, "q1") is None
    assert len(off) == 0


# ------------------------------------------------------------ the cache fill: what it decodes


class RecordingBroker:
    """Keeps what would have been published (topic, headers)."""

    def __init__(self) -> None:
        self.published: list[dict[str, object]] = []

    async def publish(self, message: object, **kwargs: object) -> None:
        self.published.append(kwargs)


class Batch:
    """The part of a batch StreamMessage the decoder reads: bodies and headers per record."""

    def __init__(self, records: Sequence[tuple[bytes, dict[str, str]]]) -> None:
        self.body = [body for body, _ in records]
        self.batch_headers = [headers for _, headers in records]


def _completed(*, semantic_cache: bool, cached: bool) -> ChatCompleted:
    return ChatCompleted(
        tenant_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        user_id="u",
        question="q?",
        answer="a.",
        model="m",
        usage=TokenUsage(prompt_tokens=1, completion_tokens=1),
        config_version=1,
        corpus_version=0,
        semantic_cache=semantic_cache,
        cached=cached,
    )


async def _headers_of(event: Event) -> dict[str, str]:
    broker = RecordingBroker()
    await publish_event(broker, CHAT_RESPONSES, event)  # type: ignore[arg-type]
    headers = broker.published[0]["headers"]
    assert isinstance(headers, dict)
    return headers


@pytest.mark.parametrize(
    ("semantic_cache", "cached", "decoded"),
    [(True, False, True), (False, False, False), (True, True, False)],
)
async def test_only_answers_that_may_be_cached_are_decoded_for_the_fill(
    semantic_cache: bool, cached: bool, decoded: bool
) -> None:
    headers = await _headers_of(_completed(semantic_cache=semantic_cache, cached=cached))
    assert may_fill_cache(headers) is decoded


async def test_deltas_and_failures_are_passed_over_and_headerless_bytes_decoded() -> None:
    tenant, request = uuid.uuid4(), uuid.uuid4()
    delta = ChatDelta(tenant_id=tenant, request_id=request, seq=0, delta="x")
    failed = ChatFailed(
        tenant_id=tenant, request_id=request, reason=FailureReason.INTERNAL, message="m"
    )
    for event in (delta, failed):
        assert may_fill_cache(await _headers_of(event)) is False
    # No headers (not one of ours): decoded, so malformed bytes still reach the DLQ.
    assert may_fill_cache({}) is True


async def test_a_batch_decodes_only_the_answers_it_may_cache_and_skips_the_rest_unread() -> None:
    keep = _completed(semantic_cache=True, cached=False)
    gateway = _completed(semantic_cache=False, cached=False)
    delta = ChatDelta(tenant_id=uuid.uuid4(), request_id=uuid.uuid4(), seq=0, delta="x")
    records = [
        (event.model_dump_json().encode(), await _headers_of(event))
        for event in (gateway, keep, delta)
    ]
    # Bytes that are no event at all, under headers that say "not cacheable": never read.
    records.append((b"\xff not json", await _headers_of(gateway)))
    answers = await decode_cache_fills(Batch(records))  # type: ignore[arg-type]
    assert [a.request_id for a in answers] == [keep.request_id]


async def test_headerless_malformed_bytes_fail_the_batch_so_the_record_is_dead_lettered() -> None:
    keep = _completed(semantic_cache=True, cached=False)
    records = [
        (keep.model_dump_json().encode(), await _headers_of(keep)),
        (b"\xff not json", {}),
    ]
    with pytest.raises(ValidationError):
        await decode_cache_fills(Batch(records))  # type: ignore[arg-type]
