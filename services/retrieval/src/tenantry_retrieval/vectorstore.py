"""Vector stores with one namespace per tenant and purpose: Chroma (embedded or server), Pinecone.

Isolation lives in :func:`namespace_for`, the only place a collection or namespace name is
made. Stores take a tenant UUID, never a name, so no caller (and nothing a tenant sends) can
point a read or write at another tenant's vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tenantry_retrieval.config import RetrievalSettings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

log = logging.getLogger("tenantry.retrieval")

#: The SQLite file an embedded Chroma keeps its log, metadata and collections in.
CHROMA_SQLITE_FILE = "chroma.sqlite3"

MetadataValue = str | int | float | bool
#: Equality on a field, or one comparison: ``{"$gt": 5}`` (``$eq $ne $gt $gte $lt $lte``), or
#: ``{"$in": ["a", "b"]}`` (one of the values; Chroma and Pinecone both take it).
Filter = Mapping[str, MetadataValue | Mapping[str, MetadataValue | list[MetadataValue]]]


class Namespace(enum.StrEnum):
    """What a tenant's namespace holds; each tenant has one of each, never shared."""

    DOCUMENTS = "docs"
    CACHE = "cache"


class TenantRequired(ValueError):
    """A vector store call came without a tenant UUID."""


def namespace_for(tenant_id: uuid.UUID, kind: Namespace) -> str:
    """The collection (Chroma) or namespace (Pinecone) name of one tenant's documents or cache."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TenantRequired("a vector store call needs the tenant's UUID")
    return f"tenant-{tenant_id.hex}-{Namespace(kind).value}"


@dataclass(frozen=True)
class VectorRecord:
    id: str
    vector: Sequence[float]
    text: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float  # cosine similarity, 1.0 = same direction
    text: str
    metadata: Mapping[str, MetadataValue]


class VectorStore(Protocol):
    """What retrieval needs from a vector database, always inside one tenant's namespace.

    A namespace exists from its first write on; until then a query answers empty, a count 0,
    and a delete or drop does nothing.
    """

    async def upsert(
        self, *, tenant_id: uuid.UUID, kind: Namespace, records: Sequence[VectorRecord]
    ) -> None:
        """Insert or replace records by id; the first write creates the namespace."""
        ...

    async def query(
        self,
        *,
        tenant_id: uuid.UUID,
        kind: Namespace,
        vector: Sequence[float],
        top_k: int,
        where: Filter | None = None,
    ) -> list[VectorHit]:
        """The ``top_k`` most similar records, best first."""
        ...

    async def delete_where(self, *, tenant_id: uuid.UUID, kind: Namespace, where: Filter) -> None:
        """Delete every record whose metadata matches."""
        ...

    async def count(self, *, tenant_id: uuid.UUID, kind: Namespace) -> int:
        """Records in the namespace (0 if it does not exist)."""
        ...

    async def drop(self, *, tenant_id: uuid.UUID, kind: Namespace) -> None:
        """Delete the namespace and everything in it (no error if absent)."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _comparison(
    value: MetadataValue | Mapping[str, MetadataValue | list[MetadataValue]],
) -> dict[str, MetadataValue | list[MetadataValue]]:
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ValueError("a filter field takes exactly one comparison")
        return dict(value)
    return {"$eq": value}


def _clauses(where: Filter) -> list[dict[str, Any]]:
    return [{name: _comparison(value)} for name, value in where.items()]


# --------------------------------------------------------------------------- Chroma


class ChromaStore:
    """Chroma: one collection per tenant and purpose, cosine space; calls run off the loop."""

    def __init__(self, client: ClientAPI) -> None:
        self._client = client
        self._collections: dict[str, Collection] = {}

    @classmethod
    def from_settings(cls, settings: RetrievalSettings) -> ChromaStore:
        """Embedded PersistentClient, or HttpClient when ``chroma_http_url`` is set."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        if settings.chroma_http_url:
            from urllib.parse import urlparse

            url = urlparse(settings.chroma_http_url)
            client = chromadb.HttpClient(
                host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        else:
            settings.chroma_path.mkdir(parents=True, exist_ok=True)
            # Before Chroma opens the file: see use_write_ahead_log.
            mode = use_write_ahead_log(settings.chroma_path)
            if mode not in ("wal", None):
                log.warning(
                    "Chroma's SQLite file stays in %s journal mode: each write stops the "
                    "event loop longer",
                    mode,
                )
            client = chromadb.PersistentClient(
                path=str(settings.chroma_path), settings=chroma_settings
            )
        return cls(client)

    def _collection(self, name: str, *, create: bool) -> Collection | None:
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        from chromadb.errors import NotFoundError

        if create:
            collection = self._client.get_or_create_collection(
                name,
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,  # vectors always come from our embedder
            )
        else:
            try:
                collection = self._client.get_collection(name, embedding_function=None)
            except NotFoundError:
                return None
        self._collections[name] = collection
        return collection

    async def upsert(
        self, *, tenant_id: uuid.UUID, kind: Namespace, records: Sequence[VectorRecord]
    ) -> None:
        """Insert or replace records by id."""
        name = namespace_for(tenant_id, kind)
        if not records:
            return

        def run() -> None:
            collection = self._collection(name, create=True)
            assert collection is not None
            collection.upsert(
                ids=[r.id for r in records],
                embeddings=[list(r.vector) for r in records],  # type: ignore[arg-type]
                documents=[r.text for r in records],
                metadatas=[dict(r.metadata) or None for r in records],  # type: ignore[misc]
            )

        await asyncio.to_thread(run)

    async def query(
        self,
        *,
        tenant_id: uuid.UUID,
        kind: Namespace,
        vector: Sequence[float],
        top_k: int,
        where: Filter | None = None,
    ) -> list[VectorHit]:
        """The ``top_k`` most similar records, best first."""
        name = namespace_for(tenant_id, kind)
        return await asyncio.to_thread(self.query_sync, name, vector, top_k, where)

    def query_sync(
        self, name: str, vector: Sequence[float], top_k: int, where: Filter | None
    ) -> list[VectorHit]:
        """The blocking query (also what the benchmark times, without the thread hop)."""
        collection = self._collection(name, create=False)
        if collection is None:
            return []
        clauses = _clauses(where or {})
        chroma_where: dict[str, Any] | None = (
            None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        )
        result = collection.query(
            query_embeddings=[list(vector)],  # type: ignore[arg-type]
            n_results=top_k,
            where=chroma_where,
            include=["documents", "metadatas", "distances"],
        )
        ids = result["ids"][0]
        documents = (result.get("documents") or [[]])[0]
        metadatas = (result.get("metadatas") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [
            VectorHit(
                id=ids[i],
                score=1.0 - float(distances[i]),
                text=documents[i] or "",
                metadata=dict(metadatas[i] or {}),  # type: ignore[arg-type]
            )
            for i in range(len(ids))
        ]

    async def delete_where(self, *, tenant_id: uuid.UUID, kind: Namespace, where: Filter) -> None:
        """Delete every record whose metadata matches."""
        name = namespace_for(tenant_id, kind)
        clauses = _clauses(where)
        if not clauses:
            raise ValueError("delete_where needs a filter (use drop to empty a namespace)")

        def run() -> None:
            collection = self._collection(name, create=False)
            if collection is not None:
                collection.delete(where=clauses[0] if len(clauses) == 1 else {"$and": clauses})

        await asyncio.to_thread(run)

    async def count(self, *, tenant_id: uuid.UUID, kind: Namespace) -> int:
        """Records in the collection (0 if it does not exist)."""
        name = namespace_for(tenant_id, kind)

        def run() -> int:
            collection = self._collection(name, create=False)
            return 0 if collection is None else int(collection.count())

        return await asyncio.to_thread(run)

    async def drop(self, *, tenant_id: uuid.UUID, kind: Namespace) -> None:
        """Delete the collection (no error if absent)."""
        name = namespace_for(tenant_id, kind)

        def run() -> None:
            from chromadb.errors import NotFoundError

            self._collections.pop(name, None)
            with contextlib.suppress(NotFoundError):
                self._client.delete_collection(name)

        await asyncio.to_thread(run)

    async def ping(self) -> None:
        """Raise if Chroma does not answer."""
        await asyncio.to_thread(self._client.heartbeat)

    async def close(self) -> None:
        """Forget cached collection handles."""
        self._collections.clear()


def use_write_ahead_log(chroma_path: Path) -> str | None:
    """Put an embedded Chroma's SQLite file in WAL journal mode (creating the file if new); the
    mode now in force, or None when this process already has the file open (left as it is).

    Chroma (1.5) leaves its file in SQLite's default rollback-journal mode, where a commit
    syncs the journal and then the file: ≈ 3.8 fsyncs per one-record upsert (strace, every
    thread), all while Chroma's Rust binding holds the GIL (it frees it for reads, not for
    writes), so each answer the semantic cache keeps stops the event loop for the whole
    write. In WAL mode a commit appends to the log and syncs it once: ≈ 1.6 fsyncs per
    upsert, and the process froze ≈ 20 % less per upsert (median 7.0 against 8.7 ms on a
    noisy machine; bench/README.md "The cache's writes"). A commit is still on disk when it
    returns. The mode is stored in the file, and Chroma creates its tables in a new file set
    up this way as in any other. WAL needs SQLite's shared memory, so a network file system
    may refuse it (the mode returned then says so).

    Call it before this process opens the directory with Chroma. Chroma's binding carries its
    own copy of SQLite, and POSIX file locks belong to the process: this connection closing
    while Chroma has the file open would drop Chroma's locks and, seeing no other connection,
    delete the WAL file Chroma writes to (sqlite.org/howtocorrupt.html, "multiple copies of
    SQLite"). So nothing is done when this process has set the file up before, or has it open
    (as /proc tells, on Linux).
    """
    database = (chroma_path / CHROMA_SQLITE_FILE).resolve()
    if database in _PREPARED or _open_in_this_process(database):
        return None
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
    _PREPARED.add(database)
    return str(mode).lower()


#: The files use_write_ahead_log has set up in this process: Chroma keeps a file open for the
#: rest of the process once it has opened it, wherever /proc cannot tell.
_PREPARED: set[Path] = set()


def _open_in_this_process(path: Path) -> bool:
    """Whether one of this process's file descriptors is ``path`` (False where /proc is not)."""
    target = str(path.resolve())
    descriptors = Path("/proc/self/fd")
    with contextlib.suppress(OSError):
        for descriptor in descriptors.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(descriptor) == target:
                    return True
    return False


# --------------------------------------------------------------------------- Pinecone


class PineconeStore:
    """Pinecone: one serverless index, one namespace per tenant and purpose (cosine metric)."""

    def __init__(self, index: Any, *, pinecone: Any = None) -> None:
        self._index = index
        self._pinecone = pinecone

    @classmethod
    def from_settings(cls, settings: RetrievalSettings, *, dimension: int) -> PineconeStore:
        """Connect to (creating if absent) the configured index."""
        from pinecone import Pinecone, ServerlessSpec

        if settings.pinecone_api_key is None:
            raise ValueError("pinecone needs an API key")
        pc = Pinecone(api_key=settings.pinecone_api_key.get_secret_value())
        if not pc.has_index(settings.pinecone_index):
            pc.create_index(
                name=settings.pinecone_index,
                dimension=dimension,
                metric="cosine",
                spec=ServerlessSpec(cloud=settings.pinecone_cloud, region=settings.pinecone_region),
            )
        host = str(pc.describe_index(settings.pinecone_index).host)
        return cls(pc.Index(host=host), pinecone=pc)

    async def upsert(
        self, *, tenant_id: uuid.UUID, kind: Namespace, records: Sequence[VectorRecord]
    ) -> None:
        """Insert or replace records by id (the text travels in metadata)."""
        namespace = namespace_for(tenant_id, kind)
        vectors = [
            {"id": r.id, "values": list(r.vector), "metadata": dict(r.metadata) | {"_text": r.text}}
            for r in records
        ]
        for start in range(0, len(vectors), 100):
            await asyncio.to_thread(
                self._index.upsert, vectors=vectors[start : start + 100], namespace=namespace
            )

    async def query(
        self,
        *,
        tenant_id: uuid.UUID,
        kind: Namespace,
        vector: Sequence[float],
        top_k: int,
        where: Filter | None = None,
    ) -> list[VectorHit]:
        """The ``top_k`` most similar records, best first."""
        namespace = namespace_for(tenant_id, kind)
        result = await asyncio.to_thread(
            self._index.query,
            vector=list(vector),
            top_k=top_k,
            namespace=namespace,
            filter={"$and": _clauses(where)} if where else None,
            include_metadata=True,
        )
        hits: list[VectorHit] = []
        for match in result.matches or []:
            metadata = dict(match.metadata or {})
            text = str(metadata.pop("_text", ""))
            hits.append(
                VectorHit(id=match.id, score=float(match.score), text=text, metadata=metadata)
            )
        return hits

    async def delete_where(self, *, tenant_id: uuid.UUID, kind: Namespace, where: Filter) -> None:
        """Delete every record whose metadata matches."""
        namespace = namespace_for(tenant_id, kind)
        if not where:
            raise ValueError("delete_where needs a filter (use drop to empty a namespace)")
        try:
            await asyncio.to_thread(
                self._index.delete, filter={"$and": _clauses(where)}, namespace=namespace
            )
        except Exception as exc:
            if _is_not_found(exc):
                return
            raise

    async def count(self, *, tenant_id: uuid.UUID, kind: Namespace) -> int:
        """Records in the namespace (0 if it does not exist)."""
        namespace = namespace_for(tenant_id, kind)
        stats = await asyncio.to_thread(self._index.describe_index_stats)
        summary = (stats.namespaces or {}).get(namespace)
        return int(summary.vector_count) if summary is not None else 0

    async def drop(self, *, tenant_id: uuid.UUID, kind: Namespace) -> None:
        """Delete the namespace (no error if absent)."""
        namespace = namespace_for(tenant_id, kind)
        try:
            await asyncio.to_thread(self._index.delete, delete_all=True, namespace=namespace)
        except Exception as exc:
            if _is_not_found(exc):
                return
            raise

    async def ping(self) -> None:
        """Raise if Pinecone does not answer."""
        await asyncio.to_thread(self._index.describe_index_stats)

    async def close(self) -> None:
        """Nothing to release (the SDK pools its own connections)."""


def _is_not_found(exc: Exception) -> bool:
    # SDK 7 raises NotFoundException with ``status``; SDK 10 raises NotFoundError with
    # ``status_code`` (NotFoundException survives only as an alias, so the name check misses it).
    return (
        404 in (getattr(exc, "status", None), getattr(exc, "status_code", None))
        or type(exc).__name__ == "NotFoundException"
    )


def build_store(settings: RetrievalSettings, *, dimension: int) -> VectorStore:
    """The vector store the settings name."""
    if settings.vector_backend == "pinecone":
        return PineconeStore.from_settings(settings, dimension=dimension)
    return ChromaStore.from_settings(settings)
