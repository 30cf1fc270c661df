"""An in-process mock of Pinecone's data-plane REST API, for the parts PineconeStore uses.

Pinecone is a cloud service and cannot run here, so this is the one thing the tests mock; every
test that uses it says "mock" in its id. It is served over real HTTP (uvicorn, a free port on
127.0.0.1) and driven through the installed ``pinecone`` SDK's own client, the way Pinecone Local
is used: ``Pinecone(api_key=...).Index(host=mock.host)``. Paths, JSON shapes and headers follow
what the SDK (v10, data-plane API version 2026-07) sends and decodes:

* ``POST /vectors/upsert``  ``{"vectors": [{"id", "values", "metadata"?}], "namespace"?}``
  -> ``{"upsertedCount": n}``; the first write creates the namespace.
* ``POST /query``  ``{"topK", "vector" | "id", "namespace"?, "filter"?, "includeValues",
  "includeMetadata"}`` -> ``{"matches": [{"id", "score", "values", "metadata"?}], "namespace",
  "usage": {"readUnits"}}``; cosine similarity, best first; a namespace that does not exist
  answers with no matches.
* ``POST /vectors/delete``  ``{"namespace", "ids" | "deleteAll" | "filter"}`` -> ``{}``;
  ``deleteAll`` removes the namespace, and any delete in a namespace that does not exist answers
  404 ``{"code": 5, "message": "Namespace not found"}`` as Pinecone serverless does.
* ``POST /describe_index_stats`` -> ``{"namespaces": {name: {"vectorCount"}}, "dimension",
  "indexFullness", "totalVectorCount", "metric", "vectorType"}``.

Every request must carry the ``Api-Key`` header (401 otherwise). Metadata filters take ``$and``
and ``$or``, plain equality, ``$eq $ne $gt $gte $lt $lte $in $nin $exists``; a list-valued field
matches ``$eq``/``$in`` when any element does. Numbers come back as floats, because Pinecone keeps
metadata numbers as float64. What it does not model: eventual consistency (writes are visible at
once), sparse vectors, other metrics, pagination, quotas.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

#: The dimension of the mock index the test session serves (conftest.py) and its tests use.
MOCK_INDEX_DIMENSION = 16
DEFAULT_NAMESPACE = "__default__"  # how Pinecone names the "" namespace in its stats
_MISSING = object()


class PineconeApiError(Exception):
    """A request Pinecone would refuse; rendered as its data-plane error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad_request(message: str) -> PineconeApiError:
    return PineconeApiError(400, 3, message)  # gRPC INVALID_ARGUMENT


@dataclass
class StoredVector:
    id: str
    values: list[float]
    metadata: dict[str, Any] | None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class PineconeMock:
    """The index's state and the Starlette app serving it; ``host`` is set once it listens."""

    dimension: int  # fixed when the index is created, as in Pinecone
    api_key: str = "mock-key"
    namespaces: dict[str, dict[str, StoredVector]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    host: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/vectors/upsert", self._endpoint(self.upsert), methods=["POST"]),
                Route("/query", self._endpoint(self.query), methods=["POST"]),
                Route("/vectors/delete", self._endpoint(self.delete), methods=["POST"]),
                Route(
                    "/describe_index_stats",
                    self._endpoint(self.describe_index_stats),
                    methods=["POST", "GET"],
                ),
                # Anything else the SDK sends is a gap in the mock, never a 404 a caller might
                # take for "namespace not found" and tolerate.
                Route(
                    "/{path:path}",
                    self._not_implemented,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    async def _not_implemented(self, request: Request) -> JSONResponse:
        with self._lock:
            self.requests.append(
                RecordedRequest(request.method, request.url.path, dict(request.headers), None)
            )
        message = f"the Pinecone mock does not implement {request.method} {request.url.path}"
        return JSONResponse({"code": 12, "message": message, "details": []}, status_code=501)

    def _endpoint(self, operation: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            raw = await request.body()
            try:
                body = await request.json() if raw else {}
            except ValueError:
                body = None
            with self._lock:
                self.requests.append(
                    RecordedRequest(request.method, request.url.path, dict(request.headers), body)
                )
                try:
                    if request.headers.get("api-key") != self.api_key:
                        raise PineconeApiError(401, 16, "Invalid API Key")
                    if not isinstance(body, dict):
                        raise _bad_request("the request body must be a JSON object")
                    return JSONResponse(operation(body))
                except PineconeApiError as exc:
                    return JSONResponse(
                        {"code": exc.code, "message": exc.message, "details": []},
                        status_code=exc.status,
                    )

        return endpoint

    # ------------------------------------------------------------------ operations

    def upsert(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /vectors/upsert``: insert or replace by id; creates the namespace."""
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not 1 <= len(vectors) <= 1000:
            raise _bad_request("vectors must be a list of 1 to 1000 vectors")
        parsed = [self._parse_vector(v) for v in vectors]
        namespace = self.namespaces.setdefault(_namespace(body), {})
        for vector in parsed:
            namespace[vector.id] = vector
        return {"upsertedCount": len(parsed)}

    def query(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /query``: the ``topK`` nearest by cosine similarity, best first."""
        top_k = body.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 10_000:
            raise _bad_request("topK must be an integer from 1 to 10000")
        name = _namespace(body)
        records = self.namespaces.get(name, {})
        if "vector" in body and "id" in body:
            raise _bad_request("Cannot provide both 'id' and 'vector'")
        if "vector" in body:
            query_vector = self._check_values(body["vector"], what="Query vector")
        elif "id" in body:
            stored = records.get(str(body["id"]))
            if stored is None:
                return _query_response([], name)
            query_vector = stored.values
        else:
            raise _bad_request("A query needs a 'vector' or an 'id'")
        where = body.get("filter")
        if where is not None and not isinstance(where, dict):
            raise _bad_request("filter must be an object")
        include_values = bool(body.get("includeValues", False))
        include_metadata = bool(body.get("includeMetadata", False))
        candidates = [r for r in records.values() if not where or _matches(where, r.metadata or {})]
        scored = sorted(
            ((_cosine(query_vector, r.values), r) for r in candidates),
            key=lambda pair: (-pair[0], pair[1].id),
        )[:top_k]
        matches = []
        for score, record in scored:
            match: dict[str, Any] = {
                "id": record.id,
                "score": score,
                "values": list(record.values) if include_values else [],
            }
            if include_metadata and record.metadata is not None:
                match["metadata"] = dict(record.metadata)
            matches.append(match)
        return _query_response(matches, name)

    def delete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /vectors/delete``: by ids, by filter, or the whole namespace."""
        name = _namespace(body)
        selectors = [k for k in ("ids", "deleteAll", "filter") if body.get(k)]
        if len(selectors) != 1:
            raise _bad_request("delete takes exactly one of ids, deleteAll and filter")
        records = self.namespaces.get(name)
        if records is None:
            raise PineconeApiError(404, 5, "Namespace not found")
        if body.get("deleteAll"):
            del self.namespaces[name]
        elif body.get("ids"):
            for vector_id in body["ids"]:
                records.pop(str(vector_id), None)
        else:
            where = body["filter"]
            if not isinstance(where, dict):
                raise _bad_request("filter must be an object")
            doomed = [r.id for r in records.values() if _matches(where, r.metadata or {})]
            for vector_id in doomed:
                del records[vector_id]
        return {}

    def describe_index_stats(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /describe_index_stats``: vector counts per namespace."""
        if body.get("filter"):
            raise _bad_request(
                "Serverless and starter indexes do not support describing index "
                "stats with metadata filtering"
            )
        counts = {name: len(records) for name, records in self.namespaces.items()}
        return {
            "namespaces": {name: {"vectorCount": n} for name, n in counts.items()},
            "dimension": self.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(counts.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }

    # ------------------------------------------------------------------ validation

    def _parse_vector(self, raw: Any) -> StoredVector:
        if not isinstance(raw, dict):
            raise _bad_request("each vector must be an object")
        vector_id = raw.get("id")
        if not isinstance(vector_id, str) or not vector_id:
            raise _bad_request("each vector needs a non-empty string id")
        values = self._check_values(raw.get("values"), what="Vector")
        if not any(values):
            raise _bad_request("Dense vectors must contain at least one non-zero value")
        metadata = raw.get("metadata")
        return StoredVector(
            vector_id, values, None if metadata is None else _check_metadata(metadata)
        )

    def _check_values(self, raw: Any, *, what: str) -> list[float]:
        if not isinstance(raw, list) or not all(_is_number(x) for x in raw):
            raise _bad_request(f"{what} values must be a list of numbers")
        if len(raw) != self.dimension:
            raise _bad_request(
                f"{what} dimension {len(raw)} does not match the dimension of the index "
                f"{self.dimension}"
            )
        return [float(x) for x in raw]


def _namespace(body: Mapping[str, Any]) -> str:
    name = body.get("namespace") or ""
    if not isinstance(name, str):
        raise _bad_request("namespace must be a string")
    return name or DEFAULT_NAMESPACE


def _query_response(matches: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    shown = "" if namespace == DEFAULT_NAMESPACE else namespace
    return {"results": [], "matches": matches, "namespace": shown, "usage": {"readUnits": 1}}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_metadata(metadata: Any) -> dict[str, Any]:
    """Pinecone metadata: flat; strings, numbers (kept as float64), booleans, lists of strings."""
    if not isinstance(metadata, dict):
        raise _bad_request("metadata must be an object")
    stored: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool | str):
            stored[key] = value
        elif _is_number(value):
            stored[key] = float(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            stored[key] = list(value)
        else:
            raise _bad_request(
                f"Metadata value for field '{key}' must be a string, number, boolean or list "
                "of strings"
            )
    return stored


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 0.0 if norm == 0 else sum(x * y for x, y in zip(a, b, strict=True)) / norm


# ---------------------------------------------------------------------- metadata filters


def _matches(where: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    for key, condition in where.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not all(isinstance(c, dict) for c in condition):
                raise _bad_request(f"{key} takes a list of filter objects")
            results = (_matches(sub, metadata) for sub in condition)
            if not (all(results) if key == "$and" else any(results)):
                return False
        elif key.startswith("$"):
            raise _bad_request(f"unknown top-level filter operator {key}")
        elif isinstance(condition, dict):
            if not condition:
                raise _bad_request(f"the filter on '{key}' has no operator")
            for operator, operand in condition.items():
                if not _compare(operator, operand, metadata.get(key, _MISSING)):
                    return False
        elif not _compare("$eq", condition, metadata.get(key, _MISSING)):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equality that, like Pinecone's, never takes ``True`` for ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _compare(operator: str, operand: Any, value: Any) -> bool:
    elements = value if isinstance(value, list) else [value]
    if operator in ("$eq", "$ne"):
        if not (isinstance(operand, bool | str) or _is_number(operand)):
            raise _bad_request(f"{operator} takes a string, number or boolean")
        hit = value is not _MISSING and any(_same(operand, e) for e in elements)
        return hit if operator == "$eq" else not hit
    if operator in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise _bad_request(f"{operator} takes a list")
        hit = value is not _MISSING and any(_same(o, e) for o in operand for e in elements)
        return hit if operator == "$in" else not hit
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        if not _is_number(operand):
            raise _bad_request(f"{operator} takes a number")
        if not _is_number(value):
            return False
        return {
            "$gt": value > operand,
            "$gte": value >= operand,
            "$lt": value < operand,
            "$lte": value <= operand,
        }[operator]
    if operator == "$exists":
        if not isinstance(operand, bool):
            raise _bad_request("$exists takes a boolean")
        return (value is not _MISSING) == operand
    raise _bad_request(f"unknown filter operator {operator}")


# ---------------------------------------------------------------------- serving


@contextmanager
def serve_pinecone_mock(*, dimension: int, api_key: str = "mock-key") -> Iterator[PineconeMock]:
    """Serve a fresh mock index on a free 127.0.0.1 port in a thread; ``mock.host`` is its URL."""
    mock = PineconeMock(dimension=dimension, api_key=api_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(mock.app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="pinecone-mock", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Pinecone mock did not start")
        time.sleep(0.01)
    mock.host = f"http://127.0.0.1:{port}"
    try:
        yield mock
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()
