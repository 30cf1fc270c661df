"""Semantic-cache lookup: the service's lookup against the store's filtered query, by cache size.

    .venv/bin/python bench/retrieval/bench_cache_lookup.py [--sizes 100,1000,10000]

For each size, one tenant's cache namespace in an embedded Chroma (temporary directory) is
filled with that many entries: precomputed random unit vectors (384 dimensions), three in four
made under the scope the questions ask in, one in four under another model. Then, interleaved
question by question, two ways of looking up the same vectors, each through the async store
call the service makes (the thread hop included):

* ``service``: :func:`tenantry_retrieval.service.find_cached`, what retrieval runs;
* ``filtered``: one top-1 query with the scope as Chroma's metadata filter, which is what
  retrieval ran up to 2026-12-03 (``model``, ``config_version``, ``corpus_version`` and
  ``expires_at``).

Hits ask with an entry's vector nudged to a cosine similarity of about 0.95 (a paraphrase);
misses with a fresh random vector. How many answers each method served, and on how many
questions they disagreed, are recorded: HNSW is approximate, and on random vectors (the worst
case for it) a nudged vector's entry is not always among the nearest found.
Results go to bench/retrieval/results-cache-lookup.json and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from bench_retrieval import percentile, random_unit_vectors
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.service import CacheScope, find_cached
from tenantry_retrieval.vectorstore import ChromaStore, Namespace, VectorHit, namespace_for

HERE = Path(__file__).resolve().parent
DIMENSION = 384
THRESHOLD = 0.9
SCOPE = CacheScope(model="smollm2-135m", config_version=3, corpus_version=7)


def fill(store: ChromaStore, tenant: uuid.UUID, vectors: np.ndarray) -> None:
    collection = store._collection(namespace_for(tenant, Namespace.CACHE), create=True)
    assert collection is not None
    expires_at = int(time.time()) + 24 * 3600
    for start in range(0, len(vectors), 5000):
        ids = range(start, min(start + 5000, len(vectors)))
        collection.add(
            ids=[str(i) for i in ids],
            embeddings=vectors[start : start + len(ids)],
            documents=[f"answer {i}" for i in ids],
            metadatas=[
                {
                    "model": SCOPE.model if i % 4 else "gpt-4o-mini",
                    "config_version": SCOPE.config_version,
                    "corpus_version": SCOPE.corpus_version,
                    "expires_at": expires_at,
                    "citations": "[]",
                }
                for i in ids
            ],
        )


async def filtered(store: ChromaStore, tenant: uuid.UUID, vector: list[float]) -> VectorHit | None:
    hits = await store.query(
        tenant_id=tenant,
        kind=Namespace.CACHE,
        vector=vector,
        top_k=1,
        where=SCOPE.where(now=int(time.time())),
    )
    return hits[0] if hits and hits[0].score >= THRESHOLD else None


async def service(store: ChromaStore, tenant: uuid.UUID, vector: list[float]) -> VectorHit | None:
    hit, _ = await find_cached(
        store,
        tenant_id=tenant,
        vector=vector,
        scope=SCOPE,
        threshold=THRESHOLD,
        now=int(time.time()),
    )
    return hit


async def bench_size(store: ChromaStore, size: int, questions: int) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    tenant = uuid.uuid4()
    vectors = random_unit_vectors(rng, size, DIMENSION)
    started = time.perf_counter()
    fill(store, tenant, vectors)
    fill_s = time.perf_counter() - started
    in_scope = np.flatnonzero(np.arange(size) % 4)
    asks: list[tuple[str, list[float]]] = []
    for i in range(questions):
        [fresh] = random_unit_vectors(rng, 1, DIMENSION)
        if i % 2:
            asks.append(("miss", fresh.tolist()))
        else:
            nudged = vectors[rng.choice(in_scope)] + 0.33 * fresh  # cosine ≈ 0.95 once unit
            asks.append(("hit", (nudged / np.linalg.norm(nudged)).tolist()))
    methods = {"service": service, "filtered": filtered}
    for _, vector in asks[:10]:  # warm both paths
        for method in methods.values():
            await method(store, tenant, vector)
    timings: dict[tuple[str, str], list[float]] = {}
    served = dict.fromkeys(methods, 0)
    disagreements = 0
    for kind, vector in asks:
        answers = []
        for name, method in methods.items():
            t0 = time.perf_counter()
            answer = await method(store, tenant, vector)
            timings.setdefault((name, kind), []).append((time.perf_counter() - t0) * 1000)
            served[name] += answer is not None
            answers.append(None if answer is None else answer.id)
        disagreements += answers[0] != answers[1]
    return {
        "entries": size,
        "fill_s": round(fill_s, 1),
        "questions": questions,
        "hits_asked": questions // 2 + questions % 2,
        "served": served,
        "disagreements": disagreements,
        "ms": {
            f"{name} {kind}": {
                "p50": round(percentile(values, 50), 2),
                "p99": round(percentile(values, 99), 2),
            }
            for (name, kind), values in timings.items()
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results-cache-lookup.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as directory:
        store = ChromaStore.from_settings(RetrievalSettings(chroma_path=Path(directory)))
        sizes = [await bench_size(store, int(s), args.questions) for s in args.sizes.split(",")]
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "threshold": THRESHOLD,
        "sizes": sizes,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| cache entries | service hit p50 / p99 | filtered hit | service miss | filtered miss "
        "| served (service / filtered) of hits asked | disagreements |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in sizes:
        ms = s["ms"]
        cells = [
            f"{ms[k]['p50']} / {ms[k]['p99']} ms"
            for k in ("service hit", "filtered hit", "service miss", "filtered miss")
        ]
        served = f"{s['served']['service']} / {s['served']['filtered']} of {s['hits_asked']}"
        cells += [served, str(s["disagreements"])]
        print(f"| {s['entries']:,} | " + " | ".join(cells) + " |")
    load = f"{results['loadavg_before'][0]} → {results['loadavg_after'][0]}"
    print(f"\nload average {load}; written to {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
