"""The local embedding model in fp32 and int8: speed and retrieval quality, in one run.

    .venv/bin/python bench/retrieval/bench_precision.py [--rounds 200] [--repeats 2]

Speed, each precision in turn (``--repeats`` times, alternating): bench_retrieval.py's question
measures (one question per call through ``LocalEmbedder.embed``, p50 / p99 with the thread hop;
twelve questions in one call), and ingest embedding (chunks/s of the corpus below in the
service's ingest batches; embedding only, no store).

Quality, on real text with its own answers: the repository's Markdown (README, docs, the services'
READMEs, bench/README.md and HISTORY.md), split into sections at its headings and chunked as
retrieval chunks a document. Two query sets, searched exactly (cosine, brute force) over all chunks:

* headings: a section's heading as the question; relevant: the chunks of that section;
* sentences: one sentence (8 to 30 words) of a chunk; relevant: every chunk that contains it.

For each precision: recall@1, recall@4 (a relevant chunk in the top 1 / 4) and MRR@10; between
them: the cosine of the two vectors of each text, and how many of fp32's top 4 int8 also returns.

Results go to bench/retrieval/precision/<timestamp>.json and are printed as Markdown.
Not pass/fail; bench/README.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from bench_retrieval import bench_question_embedding  # this directory (run as a script)
from numpy.typing import NDArray
from tenantry_retrieval.chunking import chunk_text
from tenantry_retrieval.config import EmbedPrecision, RetrievalSettings
from tenantry_retrieval.embeddings import LocalEmbedder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PRECISIONS: tuple[EmbedPrecision, ...] = ("fp32", "int8")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


@dataclass(frozen=True)
class Query:
    text: str
    relevant: frozenset[int]  # chunk indices


@dataclass(frozen=True)
class Corpus:
    chunks: list[str]
    headings: list[Query]
    sentences: list[Query]


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "bench" / "HISTORY.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "services").glob("*/README.md"))
    return [path for path in files if path.exists()]


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pairs of a Markdown text, code fences left in the body."""
    found: list[tuple[str, str]] = []
    heading, body = "", list[str]()
    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            if heading and "".join(body).strip():
                found.append((heading, "\n".join(body).strip()))
            heading, body = match.group(2).replace("`", "").strip(), []
        else:
            body.append(line)
    if heading and "".join(body).strip():
        found.append((heading, "\n".join(body).strip()))
    return found


def build_corpus(settings: RetrievalSettings, seed: int) -> Corpus:
    rng = random.Random(seed)
    chunks: list[str] = []
    headings: list[Query] = []
    for path in markdown_files():
        for heading, body in sections(path.read_text()):
            start = len(chunks)
            chunks += chunk_text(
                body, size=settings.chunk_size_chars, overlap=settings.chunk_overlap_chars
            )
            if len(heading.split()) >= 3:
                headings.append(Query(heading, frozenset(range(start, len(chunks)))))
    sentences: list[Query] = []
    for chunk in chunks:
        candidates = [
            s.strip()
            for s in re.split(r"(?<=[.!?])\s+", chunk.replace("\n", " "))
            if 8 <= len(s.split()) <= 30 and "|" not in s
        ]
        if candidates:
            sentence = rng.choice(candidates)
            relevant = frozenset(
                i for i, other in enumerate(chunks) if sentence in other.replace("\n", " ")
            )
            sentences.append(Query(sentence, relevant))
    return Corpus(chunks, headings, sentences)


async def embed_all(embedder: LocalEmbedder, texts: list[str], batch: int) -> NDArray[np.float32]:
    rows: list[list[float]] = []
    for start in range(0, len(texts), batch):
        rows += await embedder.embed(texts[start : start + batch])
    return np.array(rows, dtype=np.float32)


async def speed(embedder: LocalEmbedder, corpus: Corpus, rounds: int, batch: int) -> dict[str, Any]:
    """bench_retrieval.py's question measures, and ingest embedding without the store."""
    questions = await bench_question_embedding(embedder, rounds)
    sample = corpus.chunks[:256]
    started = time.perf_counter()
    await embed_all(embedder, sample, batch)
    chunks_per_s = len(sample) / (time.perf_counter() - started)
    return {
        "question_p50_ms": questions["p50_ms"],
        "question_p99_ms": questions["p99_ms"],
        "twelve_questions_ms": questions["burst_of_12_in_one_call_ms"],
        "ingest_chunks_per_s": round(chunks_per_s, 1),
    }


def ranked(queries: NDArray[np.float32], chunks: NDArray[np.float32]) -> NDArray[np.int64]:
    """Each query's top 10 chunk indices by cosine (the vectors are unit length)."""
    scores = queries @ chunks.T
    top: NDArray[np.int64] = np.argsort(-scores, axis=1)[:, :10]
    return top


def quality(top: NDArray[np.int64], queries: list[Query]) -> dict[str, float]:
    hits1 = hits4 = 0
    reciprocal = 0.0
    for row, query in zip(top, queries, strict=True):
        ranks = [rank for rank, index in enumerate(row) if int(index) in query.relevant]
        hits1 += bool(ranks) and ranks[0] == 0
        hits4 += bool(ranks) and ranks[0] < 4
        reciprocal += 1 / (ranks[0] + 1) if ranks else 0.0
    n = len(queries)
    return {
        "recall_at_1": round(hits1 / n, 3),
        "recall_at_4": round(hits4 / n, 3),
        "mrr_at_10": round(reciprocal / n, 3),
    }


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> dict[str, float]:
    values = (a * b).sum(axis=1)
    return {"min": round(float(values.min()), 4), "mean": round(float(values.mean()), 4)}


def overlap_at_4(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    shares = [len(set(x[:4].tolist()) & set(y[:4].tolist())) / 4 for x, y in zip(a, b, strict=True)]
    return round(statistics.mean(shares), 3)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = RetrievalSettings()
    corpus = build_corpus(settings, args.seed)
    batch = settings.ingest_embed_batch
    embedders = {
        precision: await asyncio.to_thread(
            LocalEmbedder,
            settings.local_model_path,
            threads=settings.embed_threads,
            runtime="onnx",
            precision=precision,
            onnx_cache_dir=settings.onnx_cache_dir,
        )
        for precision in PRECISIONS
    }
    speeds: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for precision, embedder in embedders.items():
            measured = await speed(embedder, corpus, args.rounds, batch)
            speeds.append({"repeat": repeat + 1, "precision": precision} | measured)
            print(f"[precision] speed {precision}: {measured}", flush=True)
    vectors: dict[str, dict[str, NDArray[np.float32]]] = {}
    for precision, embedder in embedders.items():
        vectors[precision] = {
            "chunks": await embed_all(embedder, corpus.chunks, batch),
            "headings": await embed_all(embedder, [q.text for q in corpus.headings], 32),
            "sentences": await embed_all(embedder, [q.text for q in corpus.sentences], 32),
        }
        await embedder.close()
    sets = {"headings": corpus.headings, "sentences": corpus.sentences}
    tops = {
        precision: {
            name: ranked(vectors[precision][name], vectors[precision]["chunks"]) for name in sets
        }
        for precision in PRECISIONS
    }
    return {
        "started_at": args.started_at,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "corpus": {
            "files": [str(path.relative_to(ROOT)) for path in markdown_files()],
            "chunks": len(corpus.chunks),
            "heading_queries": len(corpus.headings),
            "sentence_queries": len(corpus.sentences),
            "seed": args.seed,
        },
        "speed": speeds,
        "quality": {
            precision: {
                name: quality(tops[precision][name], queries) for name, queries in sets.items()
            }
            for precision in PRECISIONS
        },
        "int8_against_fp32": {
            "cosine": {
                name: cosine(vectors["fp32"][name], vectors["int8"][name])
                for name in ("chunks", "headings", "sentences")
            },
            "top4_overlap": {
                name: overlap_at_4(tops["fp32"][name], tops["int8"][name]) for name in sets
            },
        },
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Embedding precision {result['started_at']}",
        "",
        f"Corpus: {result['corpus']['chunks']} chunks of the repository's Markdown; "
        f"{result['corpus']['heading_queries']} heading and "
        f"{result['corpus']['sentence_queries']} sentence queries; load {result['load_average']}.",
        "",
        "| repeat | precision | question p50 / p99 ms | 12 questions ms | ingest chunks/s |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for row in result["speed"]:
        lines.append(
            f"| {row['repeat']} | {row['precision']} | {row['question_p50_ms']} / "
            f"{row['question_p99_ms']} | {row['twelve_questions_ms']} | "
            f"{row['ingest_chunks_per_s']} |"
        )
    lines += [
        "",
        "| precision | queries | recall@1 | recall@4 | MRR@10 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for precision, by_set in result["quality"].items():
        for name, q in by_set.items():
            lines.append(
                f"| {precision} | {name} | {q['recall_at_1']} | {q['recall_at_4']} | "
                f"{q['mrr_at_10']} |"
            )
    against = result["int8_against_fp32"]
    lines += [
        "",
        f"int8 against fp32: cosine {against['cosine']}, top-4 overlap {against['top4_overlap']}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="lone questions per speed run")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs per precision")
    parser.add_argument("--seed", type=int, default=7, help="which sentence of each chunk")
    args = parser.parse_args()
    args.started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    result = asyncio.run(run(args))
    out = HERE / "precision" / f"{args.started_at}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\n[precision] results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
