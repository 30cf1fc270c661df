"""One contract suite for every vector store: Chroma runs here for real, embedded in a temp
directory and as a server (``chroma run``, as compose and k8s deploy it); Pinecone runs against
the real service when PINECONE_API_KEY is set and is skipped visibly otherwise. Pinecone's cloud
cannot run here, so PineconeStore also runs the whole suite through the real ``pinecone`` SDK
against an in-process mock of Pinecone's data-plane API (``retrieval_pinecone_mock``); those
tests carry ``pinecone_mock_server`` in their id."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pinecone import Pinecone
from retrieval_pinecone_mock import MOCK_INDEX_DIMENSION, PineconeMock
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.vectorstore import (
    CHROMA_SQLITE_FILE,
    ChromaStore,
    Filter,
    Namespace,
    PineconeStore,
    TenantRequired,
    VectorRecord,
    VectorStore,
    namespace_for,
    use_write_ahead_log,
)

pytestmark = pytest.mark.integration

DIM = MOCK_INDEX_DIMENSION  # the mock Pinecone index is created with it
PINECONE_KEY = os.environ.get("PINECONE_API_KEY")


def _unit(seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def _records(document: str, count: int, seed: int = 0) -> list[VectorRecord]:
    return [
        VectorRecord(
            id=f"{document}:{i}",
            vector=_unit(seed + i),
            text=f"chunk {i} of {document}",
            metadata={"document_id": document, "chunk_index": i},
        )
        for i in range(count)
    ]


@pytest.fixture(
    params=[
        "chroma",
        "chroma_server",
        pytest.param(
            "pinecone",
            marks=pytest.mark.skipif(
                not PINECONE_KEY, reason="PINECONE_API_KEY not set: Pinecone contract not run"
            ),
        ),
        "pinecone_mock_server",
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    if request.param == "chroma":
        built: VectorStore = ChromaStore.from_settings(RetrievalSettings(chroma_path=tmp_path))
    elif request.param == "chroma_server":
        url: str = request.getfixturevalue("chroma_server")
        built = await asyncio.to_thread(
            ChromaStore.from_settings, RetrievalSettings(chroma_http_url=url)
        )
    elif request.param == "pinecone_mock_server":
        mock: PineconeMock = request.getfixturevalue("pinecone_mock_server")
        # The SDK's real client, pointed at the mock's host the way Pinecone Local is used.
        built = PineconeStore(Pinecone(api_key=mock.api_key).Index(host=mock.host))
    else:
        settings = RetrievalSettings(
            vector_backend="pinecone",
            pinecone_api_key=PINECONE_KEY,
            pinecone_index=os.environ.get("PINECONE_TEST_INDEX", "tenantry-contract-test"),
        )
        built = await asyncio.to_thread(PineconeStore.from_settings, settings, dimension=DIM)
    yield built
    await built.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Pinecone is eventually consistent; Chroma passes on the first try."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("store did not reach the expected state in time")
        await asyncio.sleep(0.5)


async def _count_is(store: VectorStore, tenant: uuid.UUID, kind: Namespace, n: int) -> None:
    async def check() -> bool:
        return await store.count(tenant_id=tenant, kind=kind) == n

    await eventually(check)


async def test_query_returns_the_nearest_records_best_first(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 10))
    await _count_is(store, tenant, Namespace.DOCUMENTS, 10)
    hits = await store.query(tenant_id=tenant, kind=Namespace.DOCUMENTS, vector=_unit(3), top_k=3)
    assert next(h.id for h in hits) == "d:3"
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].text == "chunk 3 of d"
    assert hits[0].metadata == {"document_id": "d", "chunk_index": 3}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 3


async def test_tenants_with_the_same_ids_never_see_each_other(store: VectorStore) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await store.upsert(tenant_id=a, kind=Namespace.DOCUMENTS, records=_records("d", 3))
    b_records = [
        VectorRecord(r.id, r.vector, "tenant B's " + r.text, r.metadata) for r in _records("d", 3)
    ]
    await store.upsert(tenant_id=b, kind=Namespace.DOCUMENTS, records=b_records)
    await _count_is(store, a, Namespace.DOCUMENTS, 3)
    await _count_is(store, b, Namespace.DOCUMENTS, 3)
    hits_a = await store.query(tenant_id=a, kind=Namespace.DOCUMENTS, vector=_unit(0), top_k=10)
    hits_b = await store.query(tenant_id=b, kind=Namespace.DOCUMENTS, vector=_unit(0), top_k=10)
    assert all(not h.text.startswith("tenant B") for h in hits_a)
    assert all(h.text.startswith("tenant B") for h in hits_b)
    # Same tenant, other purpose: the cache namespace is separate from the documents.
    assert await store.query(tenant_id=a, kind=Namespace.CACHE, vector=_unit(0), top_k=10) == []


async def test_upsert_by_id_replaces_instead_of_duplicating(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 4))
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 4, 50))
    await _count_is(store, tenant, Namespace.DOCUMENTS, 4)
    hits = await store.query(tenant_id=tenant, kind=Namespace.DOCUMENTS, vector=_unit(50), top_k=1)
    assert hits[0].id == "d:0"
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


async def test_filters_select_by_equality_and_comparison(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 5))
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("e", 5, 100))
    await _count_is(store, tenant, Namespace.DOCUMENTS, 10)
    hits = await store.query(
        tenant_id=tenant,
        kind=Namespace.DOCUMENTS,
        vector=_unit(0),
        top_k=10,
        where={"document_id": "e", "chunk_index": {"$gte": 3}},
    )
    assert sorted(h.id for h in hits) == ["e:3", "e:4"]


async def test_delete_where_removes_only_matching_records(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 5))
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("e", 5, 100))
    await _count_is(store, tenant, Namespace.DOCUMENTS, 10)
    await store.delete_where(tenant_id=tenant, kind=Namespace.DOCUMENTS, where={"document_id": "d"})
    await _count_is(store, tenant, Namespace.DOCUMENTS, 5)
    hits = await store.query(tenant_id=tenant, kind=Namespace.DOCUMENTS, vector=_unit(0), top_k=10)
    assert {h.metadata["document_id"] for h in hits} == {"e"}


async def test_every_comparison_selects_what_it_names(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=_records("d", 5))
    await _count_is(store, tenant, Namespace.DOCUMENTS, 5)
    expected: dict[str, tuple[Filter, list[int]]] = {
        "plain equality": ({"chunk_index": 2}, [2]),
        "$eq": ({"chunk_index": {"$eq": 2}}, [2]),
        "$ne": ({"chunk_index": {"$ne": 2}}, [0, 1, 3, 4]),
        "$gt": ({"chunk_index": {"$gt": 2}}, [3, 4]),
        "$gte": ({"chunk_index": {"$gte": 2}}, [2, 3, 4]),
        "$lt": ({"chunk_index": {"$lt": 2}}, [0, 1]),
        "$lte": ({"chunk_index": {"$lte": 2}}, [0, 1, 2]),
        "string $ne": ({"document_id": {"$ne": "d"}}, []),
        "$in": ({"chunk_index": {"$in": [1, 3]}}, [1, 3]),
        "string $in": ({"document_id": {"$in": ["x", "d"]}}, [0, 1, 2, 3, 4]),
        "string $in, none of them": ({"document_id": {"$in": ["x", "y"]}}, []),
    }
    for name, (where, chunks) in expected.items():
        hits = await store.query(
            tenant_id=tenant, kind=Namespace.DOCUMENTS, vector=_unit(0), top_k=10, where=where
        )
        assert sorted(h.id for h in hits) == [f"d:{i}" for i in chunks], name


async def test_delete_and_drop_never_reach_another_tenant(store: VectorStore) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    for tenant in (a, b):
        for kind in Namespace:
            await store.upsert(tenant_id=tenant, kind=kind, records=_records("d", 3))
    for tenant in (a, b):
        for kind in Namespace:
            await _count_is(store, tenant, kind, 3)
    # The same filter and the same namespace kind in tenant A leave tenant B whole.
    await store.delete_where(tenant_id=a, kind=Namespace.DOCUMENTS, where={"document_id": "d"})
    await store.drop(tenant_id=a, kind=Namespace.CACHE)
    await _count_is(store, a, Namespace.DOCUMENTS, 0)
    await _count_is(store, a, Namespace.CACHE, 0)
    for kind in Namespace:
        await _count_is(store, b, kind, 3)
        hits = await store.query(tenant_id=b, kind=kind, vector=_unit(1), top_k=10)
        assert sorted(h.id for h in hits) == ["d:0", "d:1", "d:2"]


async def test_delete_where_in_an_absent_namespace_is_a_no_op(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.delete_where(tenant_id=tenant, kind=Namespace.DOCUMENTS, where={"document_id": "d"})
    assert await store.count(tenant_id=tenant, kind=Namespace.DOCUMENTS) == 0


async def test_drop_deletes_the_namespace_and_tolerates_absence(store: VectorStore) -> None:
    tenant = uuid.uuid4()
    await store.upsert(tenant_id=tenant, kind=Namespace.CACHE, records=_records("q", 2))
    await _count_is(store, tenant, Namespace.CACHE, 2)
    await store.drop(tenant_id=tenant, kind=Namespace.CACHE)
    await _count_is(store, tenant, Namespace.CACHE, 0)
    assert await store.query(tenant_id=tenant, kind=Namespace.CACHE, vector=_unit(0), top_k=5) == []
    await store.drop(tenant_id=tenant, kind=Namespace.CACHE)  # already gone: no error
    await store.drop(tenant_id=uuid.uuid4(), kind=Namespace.DOCUMENTS)


@pytest.mark.parametrize(
    "bad_tenant", [None, "", "tenant-a", namespace_for(uuid.uuid4(), Namespace.DOCUMENTS)]
)
async def test_every_call_without_a_tenant_uuid_is_refused(
    store: VectorStore, bad_tenant: object
) -> None:
    kind = Namespace.DOCUMENTS
    calls = [
        store.upsert(tenant_id=bad_tenant, kind=kind, records=_records("d", 1)),  # type: ignore[arg-type]
        store.query(tenant_id=bad_tenant, kind=kind, vector=_unit(0), top_k=1),  # type: ignore[arg-type]
        store.delete_where(tenant_id=bad_tenant, kind=kind, where={"document_id": "d"}),  # type: ignore[arg-type]
        store.count(tenant_id=bad_tenant, kind=kind),  # type: ignore[arg-type]
        store.drop(tenant_id=bad_tenant, kind=kind),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TenantRequired):
            await call


async def test_ping_answers(store: VectorStore) -> None:
    await store.ping()


def _journal_mode_seen_by_another_process(database: Path) -> str:
    """Asked from a subprocess: opening and closing the file here, beside Chroma's own SQLite,
    would drop Chroma's POSIX locks (the hazard use_write_ahead_log avoids)."""
    script = (
        "import sqlite3, sys; "
        "print(sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode').fetchone()[0])"
    )
    found = subprocess.run(
        [sys.executable, "-c", script, str(database)], capture_output=True, text=True, check=True
    )
    return found.stdout.strip()


def _deleted_files_held_open() -> list[str]:
    """Files this process holds open that are gone from disk (Linux /proc)."""
    links = []
    for descriptor in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            links.append(os.readlink(descriptor))
    return [link for link in links if link.endswith(" (deleted)")]


async def test_embedded_chroma_writes_through_a_write_ahead_log(tmp_path: Path) -> None:
    """A new directory's SQLite file is made in WAL mode before Chroma opens it; the WAL stays
    on disk while Chroma writes through it (a second ChromaStore in the same process leaves the
    open file alone), and what was written is there for the next process."""
    tenant = uuid.uuid4()
    database = tmp_path / CHROMA_SQLITE_FILE
    first = ChromaStore.from_settings(RetrievalSettings(chroma_path=tmp_path))
    await first.upsert(tenant_id=tenant, kind=Namespace.CACHE, records=_records("c", 5))
    assert Path(f"{database}-wal").exists()
    assert use_write_ahead_log(tmp_path) is None  # open here: not touched

    again = ChromaStore.from_settings(RetrievalSettings(chroma_path=tmp_path))
    await again.upsert(tenant_id=tenant, kind=Namespace.CACHE, records=_records("d", 2))
    assert Path(f"{database}-wal").exists()
    assert _journal_mode_seen_by_another_process(database) == "wal"
    assert not [f for f in _deleted_files_held_open() if f.startswith(str(database))]
    assert await again.count(tenant_id=tenant, kind=Namespace.CACHE) == 7
    hits = await again.query(tenant_id=tenant, kind=Namespace.CACHE, vector=_unit(2), top_k=1)
    assert [h.id for h in hits] == ["c:2"]
    await first.close()
    await again.close()

    script = (
        "import sys; from tenantry_retrieval.config import RetrievalSettings; "
        "from tenantry_retrieval.vectorstore import ChromaStore, Namespace; import asyncio, uuid; "
        "store = ChromaStore.from_settings(RetrievalSettings(chroma_path=sys.argv[1])); "
        "print(asyncio.run(store.count(tenant_id=uuid.UUID(sys.argv[2]), kind=Namespace.CACHE)))"
    )
    counted = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(tenant)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert counted.stdout.strip().splitlines()[-1] == "7"


def test_a_file_chroma_opened_without_the_store_is_left_alone(tmp_path: Path) -> None:
    """Chroma opened by other code in this process first: the switch sees the open file (Linux
    /proc) and does nothing, rather than dropping Chroma's locks."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(tmp_path), settings=Settings(anonymized_telemetry=False)
    )
    client.heartbeat()
    assert use_write_ahead_log(tmp_path) is None
    assert _journal_mode_seen_by_another_process(tmp_path / CHROMA_SQLITE_FILE) == "delete"
