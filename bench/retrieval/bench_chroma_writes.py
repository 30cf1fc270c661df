"""Embedded Chroma's writes in SQLite's rollback-journal mode against WAL mode, in one run.

Each round makes a new SQLite file in the round's journal mode in a temporary directory, opens
an embedded Chroma on it, creates ``--collections`` collections (as the semantic cache has one
per tenant) and upserts ``--writes`` records one at a time, one every ``--every-ms`` (as the
cache fill does under load), while a second thread ticks every 0.5 ms: Chroma's binding holds
the GIL through a write, so the time the ticker misses shows how long each write stops
everything else in the process (retrieval's event loop and embedding thread). Rounds alternate
between the modes, so both meet the same machine. "CPU per upsert" is the process's CPU over
the round divided by the writes: the ticker's own wake-ups are in it, alike in both modes.

    .venv/bin/python bench/retrieval/bench_chroma_writes.py --rounds 3 --writes 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings
from tenantry_retrieval.vectorstore import use_write_ahead_log

DIMENSION = 384
TICK_S = 0.0005


def _unit(rng: np.random.Generator) -> list[float]:
    vector = rng.standard_normal(DIMENSION).astype(np.float32)
    return [float(x) for x in vector / np.linalg.norm(vector)]


class Ticker:
    """A thread that sleeps ``TICK_S`` in a loop and keeps the gaps between its turns."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(TICK_S)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def one_round(
    mode: str, *, collections: int, writes: int, every_s: float, seed: int
) -> dict[str, Any]:
    """``writes`` one-record upserts spread over ``collections`` collections in ``mode``."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench-chroma-writes-") as folder:
        # WAL as retrieval sets it up, before Chroma opens the file; otherwise Chroma's default.
        in_force = use_write_ahead_log(Path(folder)) if mode == "wal" else "delete"
        client = chromadb.PersistentClient(
            path=folder, settings=Settings(anonymized_telemetry=False)
        )
        names = [f"tenant-{i:04d}-cache" for i in range(collections)]
        targets = [
            client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
            for name in names
        ]
        vectors = [_unit(rng) for _ in range(writes)]
        walls: list[float] = []
        cpu_start = time.process_time()
        with Ticker() as ticker:
            for k, vector in enumerate(vectors):
                started = time.perf_counter()
                targets[k % collections].upsert(
                    ids=[f"answer-{k}"],
                    embeddings=[vector],  # type: ignore[arg-type]
                    documents=["a cached answer of a few sentences " * 8],
                    metadatas=[{"model": "m", "corpus_version": 1, "expires_at": 2**31}],
                )
                walls.append(time.perf_counter() - started)
                time.sleep(max(0.0, every_s - walls[-1]))
        cpu = time.process_time() - cpu_start
        gaps = sorted(ticker.gaps)
    # What the ticker missed: each gap beyond its own sleep and a scheduling slack of 0.5 ms.
    missed = sum(g - 2 * TICK_S for g in gaps if g > 2 * TICK_S)
    walls.sort()
    return {
        "mode": mode,
        "in_force": in_force,
        "writes": writes,
        "wall_p50_ms": round(walls[len(walls) // 2] * 1e3, 2),
        "wall_p90_ms": round(walls[int(len(walls) * 0.9)] * 1e3, 2),
        "cpu_per_write_ms": round(cpu / writes * 1e3, 2),
        "ticker_gap_max_ms": round(gaps[-1] * 1e3, 2),
        "frozen_per_write_ms": round(missed / writes * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating")
    parser.add_argument("--writes", type=int, default=200, help="one-record upserts per round")
    parser.add_argument("--collections", type=int, default=20, help="collections per round")
    parser.add_argument("--every-ms", type=float, default=25.0, help="one write every this often")
    parser.add_argument("--out", type=Path, help="write the rounds as JSON here")
    args = parser.parse_args()

    rounds = [
        one_round(
            mode,
            collections=args.collections,
            writes=args.writes,
            every_s=args.every_ms / 1e3,
            seed=n,
        )
        for n in range(args.rounds)
        for mode in ("delete", "wal")
    ]
    print("| mode | upsert p50 / p90 ms | CPU per upsert ms | frozen per upsert ms | longest ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rounds:
        print(
            f"| {r['in_force']} | {r['wall_p50_ms']} / {r['wall_p90_ms']} | "
            f"{r['cpu_per_write_ms']} | {r['frozen_per_write_ms']} | {r['ticker_gap_max_ms']} |"
        )
    for mode in ("delete", "wal"):
        mine = [r for r in rounds if r["mode"] == mode]
        wall, cpu, frozen = (
            statistics.median(r[key] for r in mine)
            for key in ("wall_p50_ms", "cpu_per_write_ms", "frozen_per_write_ms")
        )
        print(
            f"{mode}: median upsert p50 {wall:.2f} ms, CPU {cpu:.2f} ms, "
            f"the process frozen {frozen:.2f} ms per upsert"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rounds, indent=2) + "\n")


if __name__ == "__main__":
    main()
