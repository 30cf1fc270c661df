"""The Pinecone mock behaves as Pinecone's data plane does where PineconeStore depends on it,
and PineconeStore keeps every tenant inside its own namespace there. Pinecone's cloud cannot run
here; every test in this module runs against the in-process mock (``retrieval_pinecone_mock``)
through the real ``pinecone`` SDK, and says so in its name."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pinecone import Pinecone
from pinecone.errors.exceptions import ApiError, NotFoundError, UnauthorizedError
from retrieval_pinecone_mock import MOCK_INDEX_DIMENSION, PineconeMock
from tenantry_retrieval.vectorstore import Namespace, PineconeStore, VectorRecord, namespace_for

pytestmark = pytest.mark.integration


def _axis(i: int) -> list[float]:
    """A unit vector along axis ``i``: cosine 1 with itself, 0 with every other axis."""
    return [1.0 if j == i else 0.0 for j in range(MOCK_INDEX_DIMENSION)]


def _index(mock: PineconeMock, api_key: str | None = None) -> Any:
    return Pinecone(api_key=api_key or mock.api_key).Index(host=mock.host)


def _namespace() -> str:
    return f"mock-test-{uuid.uuid4().hex}"


def test_pinecone_mock_refuses_a_request_without_its_api_key(
    pinecone_mock_server: PineconeMock,
) -> None:
    with pytest.raises(UnauthorizedError):
        _index(pinecone_mock_server, api_key="not-the-key").describe_index_stats()


async def test_pinecone_store_ping_raises_when_the_mock_refuses_the_key(
    pinecone_mock_server: PineconeMock,
) -> None:
    store = PineconeStore(_index(pinecone_mock_server, api_key="not-the-key"))
    with pytest.raises(UnauthorizedError):
        await store.ping()
    await PineconeStore(_index(pinecone_mock_server)).ping()


def test_pinecone_mock_sees_the_sdk_headers_and_paths(pinecone_mock_server: PineconeMock) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    index.upsert(vectors=[{"id": "a", "values": _axis(0)}], namespace=namespace)
    index.query(vector=_axis(0), top_k=1, namespace=namespace)
    index.delete(filter={"k": {"$eq": "v"}}, namespace=namespace)
    index.delete(delete_all=True, namespace=namespace)
    index.describe_index_stats()
    sent = pinecone_mock_server.requests[-5:]
    assert [(r.method, r.path) for r in sent] == [
        ("POST", "/vectors/upsert"),
        ("POST", "/query"),
        ("POST", "/vectors/delete"),
        ("POST", "/vectors/delete"),
        ("POST", "/describe_index_stats"),
    ]
    assert all(r.headers["api-key"] == pinecone_mock_server.api_key for r in sent)
    assert all(r.headers.get("x-pinecone-api-version") for r in sent)
    assert sent[1].body["topK"] == 1
    assert sent[1].body["namespace"] == namespace
    assert sent[3].body == {"namespace": namespace, "deleteAll": True}


def test_pinecone_mock_answers_an_unknown_path_with_501_not_404(
    pinecone_mock_server: PineconeMock,
) -> None:
    # A 404 here would look like "namespace not found", which PineconeStore tolerates.
    with pytest.raises(ApiError) as raised:
        _index(pinecone_mock_server).describe_namespace(name="anything")
    assert raised.value.status_code == 501


def test_pinecone_mock_answers_404_for_a_delete_in_a_missing_namespace(
    pinecone_mock_server: PineconeMock,
) -> None:
    index = _index(pinecone_mock_server)
    with pytest.raises(NotFoundError):
        index.delete(delete_all=True, namespace=_namespace())
    with pytest.raises(NotFoundError):
        index.delete(filter={"k": "v"}, namespace=_namespace())
    # A query in a missing namespace is no error, just no matches.
    assert index.query(vector=_axis(0), top_k=3, namespace=_namespace()).matches == []


def test_pinecone_mock_delete_all_removes_the_namespace_from_the_stats(
    pinecone_mock_server: PineconeMock,
) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    index.upsert(
        vectors=[{"id": "a", "values": _axis(0)}, {"id": "b", "values": _axis(1)}],
        namespace=namespace,
    )
    stats = index.describe_index_stats()
    assert stats.namespaces[namespace].vector_count == 2
    assert stats.dimension == MOCK_INDEX_DIMENSION
    index.delete(delete_all=True, namespace=namespace)
    assert namespace not in index.describe_index_stats().namespaces


def test_pinecone_mock_scores_by_cosine_best_first_and_honours_top_k(
    pinecone_mock_server: PineconeMock,
) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    tilted = [2.0, 1.0] + [0.0] * (MOCK_INDEX_DIMENSION - 2)  # cosine 2/sqrt(5) with axis 0
    index.upsert(
        vectors=[
            {"id": "same", "values": [3.0] + [0.0] * (MOCK_INDEX_DIMENSION - 1)},
            {"id": "tilted", "values": tilted},
            {"id": "orthogonal", "values": _axis(1)},
        ],
        namespace=namespace,
    )
    result = index.query(vector=_axis(0), top_k=2, namespace=namespace, include_values=True)
    assert [m.id for m in result.matches] == ["same", "tilted"]
    assert result.matches[0].score == pytest.approx(1.0)
    assert result.matches[1].score == pytest.approx(2 / 5**0.5)
    assert result.matches[1].values == tilted
    assert result.matches[0].metadata is None  # not asked for


def test_pinecone_mock_keeps_metadata_numbers_as_floats(pinecone_mock_server: PineconeMock) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    index.upsert(
        vectors=[{"id": "a", "values": _axis(0), "metadata": {"n": 3, "flag": True, "s": "x"}}],
        namespace=namespace,
    )
    (match,) = index.query(
        vector=_axis(0), top_k=1, namespace=namespace, include_metadata=True
    ).matches
    assert match.metadata == {"n": 3.0, "flag": True, "s": "x"}
    assert isinstance(match.metadata["n"], float)


def test_pinecone_mock_refuses_a_vector_of_the_wrong_dimension(
    pinecone_mock_server: PineconeMock,
) -> None:
    with pytest.raises(ApiError) as raised:
        _index(pinecone_mock_server).upsert(
            vectors=[{"id": "a", "values": [1.0, 0.0]}], namespace=_namespace()
        )
    assert raised.value.status_code == 400


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"genre": "drama"}, ["a", "c"]),
        ({"genre": {"$eq": "drama"}}, ["a", "c"]),
        ({"genre": {"$ne": "drama"}}, ["b", "d"]),  # d has no genre at all
        ({"year": {"$gt": 2019}}, ["b", "c"]),
        ({"year": {"$gte": 2019}}, ["a", "b", "c"]),
        ({"year": {"$lt": 2020}}, ["a"]),
        ({"year": {"$lte": 2020}}, ["a", "b"]),
        ({"genre": {"$in": ["comedy", "horror"]}}, ["b"]),
        ({"genre": {"$nin": ["comedy"]}}, ["a", "c", "d"]),
        ({"tags": "new"}, ["a", "b"]),  # a list field matches when any element does
        ({"tags": {"$in": ["old"]}}, ["c"]),
        ({"tags": {"$nin": ["new"]}}, ["c", "d"]),
        ({"year": {"$exists": False}}, ["d"]),
        ({"seen": True}, ["a"]),
        ({"seen": 1}, []),  # a boolean is never equal to a number
        ({"$and": [{"genre": "drama"}, {"year": {"$gte": 2020}}]}, ["c"]),
        ({"$or": [{"genre": "comedy"}, {"year": {"$lt": 2020}}]}, ["a", "b"]),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else None,
)
def test_pinecone_mock_filter_operators(
    pinecone_mock_server: PineconeMock, where: dict[str, Any], expected: list[str]
) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    index.upsert(
        vectors=[
            {
                "id": "a",
                "values": _axis(0),
                "metadata": {"genre": "drama", "year": 2019, "tags": ["new"], "seen": True},
            },
            {
                "id": "b",
                "values": _axis(1),
                "metadata": {"genre": "comedy", "year": 2020, "tags": ["new", "hot"]},
            },
            {
                "id": "c",
                "values": _axis(2),
                "metadata": {"genre": "drama", "year": 2021, "tags": ["old"], "seen": False},
            },
            {"id": "d", "values": _axis(3), "metadata": {"other": "x"}},
        ],
        namespace=namespace,
    )
    result = index.query(vector=_axis(0), top_k=10, namespace=namespace, filter=where)
    assert sorted(m.id for m in result.matches) == expected
    # Delete takes the same filter language.
    index.delete(filter=where, namespace=namespace)
    left = index.query(vector=_axis(0), top_k=10, namespace=namespace).matches
    assert sorted(m.id for m in left) == sorted({"a", "b", "c", "d"} - set(expected))


def test_pinecone_mock_refuses_a_malformed_filter(pinecone_mock_server: PineconeMock) -> None:
    namespace = _namespace()
    index = _index(pinecone_mock_server)
    index.upsert(vectors=[{"id": "a", "values": _axis(0)}], namespace=namespace)
    for where in ({"year": {"$gt": "2020"}}, {"genre": {"$in": "drama"}}, {"$nor": []}):
        with pytest.raises(ApiError) as raised:
            index.query(vector=_axis(0), top_k=1, namespace=namespace, filter=where)
        assert raised.value.status_code == 400


async def test_pinecone_store_keeps_each_tenant_in_its_own_mock_namespace(
    pinecone_mock_server: PineconeMock,
) -> None:
    store = PineconeStore(_index(pinecone_mock_server))
    a, b = uuid.uuid4(), uuid.uuid4()
    same_ids = [VectorRecord(id=f"r{i}", vector=_axis(i), text=f"A's {i}") for i in range(3)]
    await store.upsert(tenant_id=a, kind=Namespace.DOCUMENTS, records=same_ids)
    await store.upsert(
        tenant_id=b,
        kind=Namespace.DOCUMENTS,
        records=[VectorRecord(id="r0", vector=_axis(0), text="B's 0")],
    )
    # The records sit in the tenant's namespace and nowhere else, text in metadata `_text`.
    stored = pinecone_mock_server.namespaces
    a_docs, b_docs = (namespace_for(t, Namespace.DOCUMENTS) for t in (a, b))
    assert sorted(stored[a_docs]) == ["r0", "r1", "r2"]
    assert sorted(stored[b_docs]) == ["r0"]
    assert stored[b_docs]["r0"].metadata == {"_text": "B's 0"}
    # A's best match for B's exact vector is A's own record; B sees only B's.
    hits_a = await store.query(tenant_id=a, kind=Namespace.DOCUMENTS, vector=_axis(0), top_k=10)
    hits_b = await store.query(tenant_id=b, kind=Namespace.DOCUMENTS, vector=_axis(0), top_k=10)
    assert [h.text for h in hits_a] == ["A's 0", "A's 1", "A's 2"]
    assert [h.text for h in hits_b] == ["B's 0"]
    assert pinecone_mock_server.requests[-1].body["namespace"] == b_docs
    assert await store.query(tenant_id=b, kind=Namespace.CACHE, vector=_axis(0), top_k=10) == []


async def test_pinecone_store_upserts_in_requests_of_at_most_100_to_the_mock(
    pinecone_mock_server: PineconeMock,
) -> None:
    store = PineconeStore(_index(pinecone_mock_server))
    tenant = uuid.uuid4()
    records = [
        VectorRecord(id=f"r{i}", vector=_axis(i % MOCK_INDEX_DIMENSION), text=str(i))
        for i in range(250)
    ]
    before = len(pinecone_mock_server.requests)
    await store.upsert(tenant_id=tenant, kind=Namespace.DOCUMENTS, records=records)
    sent = pinecone_mock_server.requests[before:]
    assert [len(r.body["vectors"]) for r in sent] == [100, 100, 50]
    assert await store.count(tenant_id=tenant, kind=Namespace.DOCUMENTS) == 250
