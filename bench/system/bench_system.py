"""System benchmark: chat through the edge's HTTP API on a running stack, RAG on/off, cache
hit/miss, at a fixed arrival rate, with many tenants holding many chunks; memory at rest.

Needs ``make up`` with the bench catalogue (``bench/gateway/run.py --print-stack-env``: one model,
``instant``, served by nginx on 127.0.0.1:18090, which this script starts and stops itself).

What it does, in order (every step bounded):

1. onboards ``--tenants`` tenants through the edge (or reuses them on the same broker);
2. fills each tenant's Chroma documents collection with ``--chunks`` chunks **directly**
   (precomputed random unit vectors of the embedder's dimension, not embedded text: embedding
   100 x 10k chunks at ≈ 15 chunks/s would take ≈ 19 hours here). Retrieval is stopped while
   its embedded Chroma directory is written, then started again by ``scripts/stack.py up``.
   ``--cache-entries N`` also writes N answers into each tenant's cache collection that no
   question can be served from (another config version; never near a question), as a busy
   tenant's cache holds: the lookup's cost at that size;
3. records each service's RSS at rest (started, idle, before any chat load);
4. per mode, a sequential probe (one request at a time) and an open-loop load at ``--rate``
   requests/s for ``--duration`` s (latency from each request's scheduled send time, so a
   stalled server is not hidden by a stalled client); with ``--warm``, first one question per
   tenant, one at a time (``warm-up``: a freshly started retrieval loading each tenant's indexes
   from disk), so that the probe and the load measure the steady state;
   with ``--find-max``, then the highest rate the mode sustains: open-loop steps from
   ``--max-from`` req/s, each ``--max-factor`` times the last, ``--max-step-s`` s each, until a
   step is not sustained twice in a row (a request not answered, or its p99 over
   ``--max-p99-ms``; one failure is run again, as a stall may be another process's). The steps
   run one after the other on one stack, so the later ones find an older local broker, unless
   ``--max-fresh-stack`` starts the stack afresh for each (tenants onboarded again and given the
   fill's collections, warmed, 20 s of rest);
5. writes ``bench/system/results/<UTC start>.json`` and ``latest.{json,md}``.

Modes: ``rag`` (RAG on, cache off, a new question each time), ``gateway`` (RAG off, cache off),
``cache-miss`` (RAG and cache on, new questions), ``cache-hit`` (RAG and cache on, each tenant's
question answered once before, so it is served from the semantic cache).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "bench" / "gateway"))

import instant  # noqa: E402
import procs  # noqa: E402
import run as gateway_run  # noqa: E402
import tenantry  # noqa: E402

VAR = ROOT / "var" / "bench"
RESULTS = HERE / "results"
INSTANT_PORT = 18090
DIMENSION = 384  # all-MiniLM-L6-v2, the local embedder
WORDS = [
    "refund",
    "annual",
    "plan",
    "invoice",
    "seat",
    "upgrade",
    "downgrade",
    "contract",
    "renewal",
    "trial",
    "discount",
    "support",
    "region",
    "storage",
    "export",
    "retention",
    "policy",
    "billing",
    "cycle",
    "tax",
    "receipt",
    "quota",
    "limit",
]


def log(message: str) -> None:
    print(f"[system] {message}", flush=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_s_by_process() -> dict[str, float]:
    """CPU seconds used so far by each process of the stack (its services and broker, as the
    gateway comparison counts them), Redis, Postgres and this process, the load generator."""
    stack: dict[str, float] = gateway_run.tenantry_cpu_by_process()
    return stack | {
        "redis": procs.named_cpu_s("redis-server"),
        "postgres": procs.named_cpu_s("postgres"),
        "load generator": time.process_time(),
    }


def cpu_per_answer(
    before: dict[str, float], after: dict[str, float], *, ok: int, elapsed_s: float
) -> dict[str, Any]:
    """Each process's CPU per answered request (ms) between two readings, and the cores used.

    A process missing from either reading (not running, or no pid file) is left out, not
    counted as 0. The bench restarts no process during a load.
    """
    used = {name: after[name] - before[name] for name in after if name in before}
    return {
        "cpu_ms_per_ok": {name: round(s * 1000 / ok, 2) for name, s in used.items()} if ok else {},
        "cpu_cores": round(sum(used.values()) / elapsed_s, 2) if elapsed_s > 0 else None,
    }


def mode_config(mode: str) -> dict[str, Any]:
    """The tenant configuration of a mode (every control on; ceilings above the load)."""
    update: dict[str, Any] = tenantry.gateway_mode_update()
    update["features"] = dict(update["features"])
    update["features"]["rag"] = mode in ("rag", "cache-miss", "cache-hit")
    update["features"]["semantic_cache"] = mode in ("cache-miss", "cache-hit")
    return update


def question(rng: random.Random) -> str:
    """A question no earlier request asked (words only: digits could look like card numbers)."""
    return "What does the " + " ".join(rng.choice(WORDS) for _ in range(6)) + " say?"


def body(text: str) -> bytes:
    return json.dumps(
        {"model": tenantry.MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    ).encode()


# ------------------------------------------------------------------------------ preparation


def prepare_tenants(args: argparse.Namespace) -> list[tenantry.BenchTenant]:
    """Onboard (or reuse) the tenants; returns them with their credentials."""
    state = VAR / "system-tenants.json"
    tenantry.prepare_tenants(
        edge_url=args.edge_url,
        operator_secret=(ROOT / "var" / "operator.secret").read_text().strip(),
        count=args.tenants,
        state_file=state,
        run_label="system"
        + uuid.uuid4().hex[:6].translate(str.maketrans("0123456789", "ghijklmnop")),
        broker_started_at=(ROOT / "var" / "run" / "kafka.pid").stat().st_mtime,
        activation_timeout_s=300,
    )
    return [tenantry.BenchTenant(**row) for row in json.loads(state.read_text())][: args.tenants]


def set_mode(args: argparse.Namespace, tenants: list[tenantry.BenchTenant], mode: str) -> None:
    update = mode_config(mode)
    for t in tenants:
        admin = tenantry.client_token(
            edge_url=args.edge_url, client_id=t.admin_client_id, client_secret=t.admin_client_secret
        )
        tenantry._call(
            args.edge_url, tenantry.CONFIG_PATH, method="PUT", token=admin, payload=update
        )
    time.sleep(2)  # inference reads config changes from tenants.config.v1


def member_tokens(args: argparse.Namespace, tenants: list[tenantry.BenchTenant]) -> list[str]:
    return [
        tenantry.client_token(
            edge_url=args.edge_url,
            client_id=t.member_client_id,
            client_secret=t.member_client_secret,
        )
        for t in tenants
    ]


def stop_retrieval() -> dict[str, str]:
    """Stop retrieval; its ``TENANTRY_*`` settings, to start it again as it was."""
    pid = int((ROOT / "var" / "run" / "retrieval.pid").read_text().strip())
    settings = service_settings(pid)
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    (ROOT / "var" / "run" / "retrieval.pid").unlink(missing_ok=True)
    return settings


def service_settings(pid: int) -> dict[str, str]:
    """The ``TENANTRY_*`` environment variables a running process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {name: value for name, _, value in pairs if name.startswith("TENANTRY_")}


#: The record at an index of a tenant's filled collection: its id, text and metadata.
Record = Callable[[tenantry.BenchTenant, int], tuple[str, str, dict[str, Any]]]


def fill_collections(
    tenants: list[tenantry.BenchTenant],
    kind: str,
    count: int,
    seed: int,
    record: Record,
) -> dict[str, Any]:
    """Write `count` random-vector records into every tenant's `kind` collection (docs, cache)."""
    import chromadb
    import numpy as np

    client = chromadb.PersistentClient(path=str(ROOT / "var" / "chroma"))
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    filled = 0
    for t in tenants:
        name = f"tenant-{uuid.UUID(t.tenant_id).hex}-{kind}"
        collection = client.get_or_create_collection(
            name, metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        if collection.count() >= count:
            continue
        for start in range(0, count, 2_000):
            vectors = rng.standard_normal((min(2_000, count - start), DIMENSION)).astype("float32")
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids, documents, metadatas = zip(
                *(record(t, start + i) for i in range(len(vectors))), strict=True
            )
            collection.upsert(
                ids=list(ids),
                embeddings=vectors,
                documents=list(documents),
                metadatas=list(metadatas),
            )
        filled += 1
    return {"tenants_filled": filled, "seconds": round(time.perf_counter() - started, 1)}


#: Which tenants' documents collections the last fill wrote, and how many chunks each.
FILLED = VAR / "system-filled.json"

#: A tenant's namespace in the local Chroma (retrieval's ``namespace_for``).
TENANT_COLLECTION = re.compile(r"tenant-(?P<tenant>[0-9a-f]{32})-(?P<kind>[a-z]+)")


def chunks_filled(tenant_ids: list[str], filled: dict[str, Any] | None, chunks: int) -> bool:
    """Whether every tenant's documents collection was filled with at least ``chunks`` chunks.

    A run with ``--no-fill`` after a restart of the local broker onboards new tenants (the
    services have forgotten the old ones), whose collections are empty: the fill belongs to the
    tenants it was written for.
    """
    if filled is None or filled.get("chunks", 0) < chunks:
        return False
    return set(tenant_ids) <= set(filled.get("tenant_ids", []))


def read_filled() -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(FILLED.read_text())
    except (OSError, ValueError):
        return None
    return record


def reuse_fill(
    tenants: list[tenantry.BenchTenant], chunks: int, *, chroma: Path = ROOT / "var" / "chroma"
) -> dict[str, Any]:
    """Give new tenants the filled documents collections of the fill's tenants (retrieval stopped).

    After a restart of the local broker the bench onboards new tenants; the fill's collections
    belong to the old ones, which no service knows any more. Each filled collection is renamed to
    a new tenant's name (in place: nothing is copied or indexed again), after the new tenant's
    own collection, if it has an empty one, is deleted. Refuses when the fill is smaller than
    asked or has fewer tenants, or when a new tenant's collection holds anything.

    Then every other tenant's collections are dropped (the fill's unused ones are kept): no
    service knows those tenants after the restart, and each collection in the store makes every
    query dearer (an embedded Chroma query of a 10k-chunk collection took 3.07 ms p50 beside
    4,700 collections left by earlier runs and 1.56 ms beside 100; bench/README.md, "Orphaned
    collections"), so the bench would measure a store of thousands of tenants, not its own.
    """
    import chromadb

    filled = read_filled()
    if chunks_filled([t.tenant_id for t in tenants], filled, chunks):
        return {"reused": 0, "dropped": 0}
    if filled is None or filled["chunks"] < chunks or len(filled["tenant_ids"]) < len(tenants):
        raise RuntimeError(f"no fill of {len(tenants)} tenants x {chunks} chunks to reuse: fill")
    client = chromadb.PersistentClient(path=str(chroma))
    names = {c.name for c in client.list_collections()}
    current = {t.tenant_id for t in tenants}
    filled_ids = set(filled["tenant_ids"])
    donors = [old for old in filled["tenant_ids"] if old not in current]
    kept = [t.tenant_id for t in tenants if t.tenant_id in filled_ids]
    reused = 0
    for tenant in tenants:
        if tenant.tenant_id in filled_ids:
            continue
        donor = donors.pop(0)
        target = f"tenant-{uuid.UUID(tenant.tenant_id).hex}-docs"
        if target in names:
            if client.get_collection(target).count():
                raise RuntimeError(f"{target} holds records: not replaced by a filled collection")
            client.delete_collection(target)
        client.get_collection(f"tenant-{uuid.UUID(donor).hex}-docs").modify(name=target)
        kept.append(tenant.tenant_id)
        reused += 1
    FILLED.write_text(json.dumps({"tenant_ids": kept + donors, "chunks": filled["chunks"]}))
    known = {uuid.UUID(tenant_id).hex for tenant_id in kept + donors}
    dropped = 0
    for collection in client.list_collections():
        match = TENANT_COLLECTION.fullmatch(collection.name)
        if match is not None and match["tenant"] not in known:
            client.delete_collection(collection.name)
            dropped += 1
    return {"reused": reused, "dropped": dropped}


def fill_chunks(tenants: list[tenantry.BenchTenant], chunks: int, seed: int) -> dict[str, Any]:
    """Write `chunks` random-vector chunks into every tenant's documents collection."""

    def chunk(t: tenantry.BenchTenant, i: int) -> tuple[str, str, dict[str, Any]]:
        document_id = str(uuid.uuid5(uuid.NAMESPACE_URL, t.tenant_id))
        return (
            f"{document_id}:{i}",
            f"Bench chunk {i} of a synthetic handbook.",
            {"document_id": document_id, "chunk_index": i, "title": "handbook"},
        )

    done = fill_collections(tenants, "docs", chunks, seed, chunk)
    FILLED.write_text(json.dumps({"tenant_ids": [t.tenant_id for t in tenants], "chunks": chunks}))
    return done


#: The corpus version of the cache filler: one no request asks in, and larger than any the
#: tenants reach, so a cache fill's purge of older versions leaves the filler in place.
FILLER_CORPUS_VERSION = 1 << 62


def fill_cache_entries(
    tenants: list[tenantry.BenchTenant], entries: int, seed: int
) -> dict[str, Any]:
    """Write `entries` random-vector answers into every tenant's cache collection.

    They stand for what a busy tenant's cache holds that the bench's questions can never be
    served from (other config versions, other models): never near a question, never expired.
    """
    expires_at = int(time.time()) + 7 * 24 * 3600

    def answer(t: tenantry.BenchTenant, i: int) -> tuple[str, str, dict[str, Any]]:
        return (
            f"filler-{i}",
            f"Bench cached answer {i}.",
            {
                "request_id": f"filler-{i}",
                "model": instant.MODEL,
                "config_version": 0,
                "corpus_version": FILLER_CORPUS_VERSION,
                "expires_at": expires_at,
                "citations": "[]",
            },
        )

    return fill_collections(tenants, "cache", entries, seed, answer)


def stack(*command: str, settings: dict[str, str] | None = None) -> None:
    """``scripts/stack.py <command>`` with the bench catalogue (the instant model)."""
    tenantry.run_stack(
        *command,
        instant_base_url=f"http://127.0.0.1:{INSTANT_PORT}/v1",
        check=True,
        settings=settings,
    )


def start_stack(settings: dict[str, str] | None = None) -> None:
    """Start whatever of the stack is not running (after ``stop_retrieval``: retrieval)."""
    stack("up", "--no-model", settings=settings)


@contextlib.contextmanager
def retrieval_stopped() -> Iterator[None]:
    """Retrieval stopped for the block (its embedded Chroma is written), then started again
    with the settings it had (a setting given to ``make up`` alone would otherwise be lost)."""
    settings = stop_retrieval()
    try:
        yield
    finally:
        start_stack(settings)


#: Seconds a freshly started stack is left alone after its warm-up, before a step. Started 2 s
#: after the warm-up, cache hits at 62/s had a p99 of 548-561 ms, where the same mode at 100/s
#: had 152 ms on a stack that had rested 20 s since its start (2026-12-06).
FRESH_SETTLE_S = 20


def restart_stack() -> None:
    """A fresh local stack (``--max-fresh-stack``): down, then up with the bench catalogue.

    Tansu's memory storage slows down as its log grows (bench/README.md, "Why the local broker
    ages"), so on one stack a later, faster step would find an older broker than the first.
    """
    stack("down")
    start_stack()


def ready_mode(
    args: argparse.Namespace,
    tenants: list[tenantry.BenchTenant],
    mode: str,
    *,
    url: str,
    questions: list[str] | None,
    warm_seed: int | None,
) -> tuple[list[str], dict[str, Any] | None]:
    """Configure the tenants for a mode; (member tokens, the warm-up run if ``warm_seed``).

    ``questions`` (the cache-hit mode's, one per tenant) are asked once first, to fill the cache.
    """
    set_mode(args, tenants, mode)
    tokens = member_tokens(args, tenants)
    if questions is not None:
        fill_cache(url, tokens, questions)
    warm = ask_each_once(url, tokens, None, seed=warm_seed) if warm_seed is not None else None
    return tokens, warm


# ------------------------------------------------------------------------------ load


async def one(
    session: aiohttp.ClientSession, url: str, token: str, text: str
) -> tuple[int, bool | None]:
    """Send one chat request; (status, whether it was a cache hit)."""
    async with session.post(
        url,
        data=body(text),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as response:
        raw = await response.read()
    if response.status != 200:
        return response.status, None
    usage = json.loads(raw).get("usage", {})
    # A semantic-cache hit is answered with zero-token usage (nothing was generated).
    return 200, usage.get("total_tokens") == 0


async def run_load(
    *,
    url: str,
    tokens: list[str],
    questions: list[str] | None,
    rate: float,
    duration_s: float,
    seed: int,
    sequential: bool = False,
) -> dict[str, Any]:
    """Open-loop load (or one request at a time); latency from each scheduled send time."""
    rng = random.Random(seed)
    count = int(rate * duration_s)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    hits = 0
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=400)
    cpu_before = cpu_s_by_process()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def send(i: int, scheduled: float) -> None:
            nonlocal hits
            tenant = i % len(tokens)
            text = questions[tenant] if questions is not None else question(rng)
            try:
                status, hit = await one(session, url, tokens[tenant], text)
            except (TimeoutError, aiohttp.ClientError) as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append((loop.time() - scheduled) * 1000)
                hits += bool(hit)

        tasks = []
        for i in range(count):
            scheduled = start + i / rate
            if sequential:
                await send(i, loop.time())
                continue
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, scheduled)))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        elapsed = loop.time() - start
    ok = len(latencies)
    cpu = cpu_per_answer(cpu_before, cpu_s_by_process(), ok=ok, elapsed_s=elapsed)
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(latencies[min(ok - 1, int(q * ok))], 1) if ok else None

    return {
        "requests": count,
        "ok": ok,
        "statuses": statuses,
        "achieved_ok_per_s": round(ok / elapsed, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 1) if ok else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if ok else None,
        "cache_hits": hits,
        "load_average": load_average(),
    } | cpu


def ask_each_once(
    url: str, tokens: list[str], questions: list[str] | None, seed: int
) -> dict[str, Any]:
    """One request per tenant, one at a time (its given question, or a new one)."""
    return asyncio.run(
        run_load(
            url=url,
            tokens=tokens,
            questions=questions,
            rate=len(tokens),
            duration_s=1,
            seed=seed,
            sequential=True,
        )
    )


def fill_cache(url: str, tokens: list[str], questions: list[str]) -> None:
    """Ask each tenant's question once (a miss that fills the cache), one at a time."""
    ask_each_once(url, tokens, questions, seed=1)
    time.sleep(3)  # retrieval's cache-fill subscriber stores the answers


# ------------------------------------------------------------------------------ highest rate


def sustained(run: dict[str, Any], *, max_p99_ms: float) -> str | None:
    """Why a step at an offered rate was not sustained, or None when it was.

    Sustained: every request sent was answered (HTTP 200) and the p99, counted from each
    request's scheduled send time, stayed within ``max_p99_ms`` (a queue that grows through the
    step pushes the p99 past any bound).
    """
    if run["ok"] < run["requests"]:
        failed = {k: v for k, v in run["statuses"].items() if k != "200"}
        return f"{run['requests'] - run['ok']} of {run['requests']} not answered: {failed}"
    if run["p99_ms"] is None or run["p99_ms"] > max_p99_ms:
        return f"p99 {run['p99_ms']} ms > {max_p99_ms:g} ms"
    return None


def step_rates(start: float, factor: float, ceiling: float) -> list[float]:
    """The offered rates of the search: ``start``, then times ``factor`` up to ``ceiling``."""
    if start <= 0 or factor <= 1 or ceiling < start:
        raise ValueError("need 0 < start <= ceiling and factor > 1")
    rates = [float(round(start))]
    while (following := float(round(rates[-1] * factor))) <= ceiling:
        rates.append(max(following, rates[-1] + 1))
    return rates


def find_highest_rate(
    load: Callable[[float], dict[str, Any]],
    rates: list[float],
    *,
    max_p99_ms: float,
    attempts: int = 2,
) -> dict[str, Any]:
    """Offer each rate in turn (``load`` runs one step) until one is not sustained.

    A step that is not sustained is run again, up to ``attempts`` times in all, before the
    search ends: on a shared machine one stall (another process, a collection flushed to disk)
    would otherwise end it early. The highest sustained rate is the last step that was; the
    first that was not bounds it from above (None: every rate up to the ceiling was sustained).
    Every attempt is kept in ``steps``.
    """
    steps: list[dict[str, Any]] = []
    highest: float | None = None
    for rate in rates:
        for attempt in range(1, attempts + 1):
            run = load(rate)
            reason = sustained(run, max_p99_ms=max_p99_ms)
            steps.append(
                {"offered_per_s": rate, "attempt": attempt, **run, "not_sustained": reason}
            )
            log(
                f"  {rate:g}/s offered (attempt {attempt}): {run['achieved_ok_per_s']} ok/s, "
                f"p50 {run['p50_ms']}, p99 {run['p99_ms']} ms"
                + (f": NOT sustained ({reason})" if reason else "")
            )
            if reason is None:
                break
        else:
            return {
                "highest_sustained_per_s": highest,
                "first_not_sustained_per_s": rate,
                "max_p99_ms": max_p99_ms,
                "steps": steps,
            }
        highest = rate
    return {
        "highest_sustained_per_s": highest,
        "first_not_sustained_per_s": None,
        "max_p99_ms": max_p99_ms,
        "steps": steps,
    }


# ------------------------------------------------------------------------------ report


def markdown(result: dict[str, Any]) -> str:
    entries = result.get("cache_entries", 0)
    filler = f" (+ {entries} unservable cache entries each)" if entries else ""
    lines = [
        f"# System bench {result['started_at']}",
        "",
        f"{result['tenants']} tenants x {result['chunks']} chunks{filler}"
        + (
            " (**not filled: these tenants' documents collections were empty**)"
            if result.get("chunks_filled") is False
            else ""
        )
        + ";"
        f" rate {result['rate']} req/s, {result['duration_s']} s per mode.",
        "",
        "| mode | kind | ok / sent | ok req/s | p50 ms | p90 ms | p99 ms | cache hits | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, runs in result["modes"].items():
        for kind, r in runs.items():
            lines.append(
                f"| {mode} | {kind} | {r['ok']} / {r['requests']} | {r['achieved_ok_per_s']} "
                f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['cache_hits']} "
                f"| {r['load_average']} |"
            )
    for mode, found in result.get("highest", {}).items():
        highest = found["highest_sustained_per_s"]
        above = found["first_not_sustained_per_s"]
        lines += [
            "",
            f"{mode}: highest sustained rate **{highest if highest is not None else 'none'}"
            f" req/s** (every request answered, p99 ≤ {found['max_p99_ms']:g} ms"
            + (f"; {above:g}/s was not" if above is not None else "; the ceiling")
            + ")"
            + (
                "; **some steps' tenants had empty documents collections**"
                if any(r.get("chunks_filled") is False for r in found["steps"])
                else ""
            ),
            "",
            "| offered req/s | attempt | ok / sent | ok req/s | p50 ms | p99 ms | load "
            "| not sustained |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in found["steps"]:
            lines.append(
                f"| {r['offered_per_s']:g} | {r.get('attempt', 1)} | {r['ok']} / {r['requests']} "
                f"| {r['achieved_ok_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
                f"| {r['load_average']} | {r['not_sustained'] or ''} |"
            )
    cpu_lines = [
        f"- {mode}, {kind}: {r['cpu_cores']} cores; "
        + ", ".join(f"{name} {ms}" for name, ms in r["cpu_ms_per_ok"].items())
        for mode, runs in result["modes"].items()
        for kind, r in runs.items()
        if kind.endswith("/s") and r.get("cpu_ms_per_ok")
    ]
    if cpu_lines:
        lines += ["", "CPU per answered request (ms), at the rate:", "", *cpu_lines]
    lines += ["", "RSS at rest (MiB): " + json.dumps(result["rss_at_rest_mb"])]
    lines += ["RSS after the load (MiB): " + json.dumps(result.get("rss_after_mb", {}))]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edge-url", default="http://127.0.0.1:8000")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks per tenant")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s (open loop)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per mode")
    parser.add_argument("--no-fill", action="store_true", help="keep the collections as they are")
    parser.add_argument(
        "--cache-entries",
        type=int,
        default=0,
        help="answers per tenant written into its cache that no question can be served from",
    )
    parser.add_argument("--probe", type=int, default=40, help="sequential requests per mode")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="before each mode with RAG or the cache, ask every tenant one new question, one at a "
        "time (reported as that mode's 'warm-up'), so the measured runs find every tenant's "
        "indexes loaded, as in a retrieval process that has served its tenants for a while",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="of the questions; default: new each run, since retrieval keeps the vectors of "
        "questions it has embedded and a rerun on the same stack would not embed them again",
    )
    parser.add_argument(
        "--modes", default="gateway,rag,cache-miss,cache-hit", help="comma-separated"
    )
    search = parser.add_argument_group(
        "highest sustained rate",
        "after each mode's fixed-rate run, offer rising rates (open loop, one step each) until "
        "one is not sustained: a request not answered, or the p99 over the bound",
    )
    search.add_argument("--find-max", action="store_true", help="run the search")
    search.add_argument("--max-from", type=float, default=50.0, help="first rate, req/s")
    search.add_argument(
        "--max-factor", type=float, default=1.2, help="each step's rate is the last times this"
    )
    search.add_argument("--max-ceiling", type=float, default=1_000.0, help="highest rate tried")
    search.add_argument("--max-step-s", type=float, default=10.0, help="seconds per step")
    search.add_argument(
        "--max-p99-ms", type=float, default=500.0, help="a step's p99 bound (from send time)"
    )
    search.add_argument(
        "--max-fresh-stack",
        action="store_true",
        help="before each step, restart the local stack (a fresh broker), onboard the tenants "
        "again, give them the fill's collections, ask each one question and let it rest 20 s "
        "(2-3 minutes per step)",
    )
    args = parser.parse_args()
    if not (1 <= args.duration <= 300 and 0 < args.rate <= 2_000 and args.tenants >= 1):
        parser.error("duration within 1..300 s, rate within 0..2000, tenants >= 1")
    if args.find_max:
        try:
            rates = step_rates(args.max_from, args.max_factor, args.max_ceiling)
        except ValueError as exc:
            parser.error(f"--max-from/--max-factor/--max-ceiling: {exc}")
        if not (1 <= args.max_step_s <= 120 and args.max_p99_ms > 0):
            parser.error("--max-step-s within 1..120, --max-p99-ms above 0")
    if procs.http_status(f"{args.edge_url}/readyz")[0] != 200:
        sys.exit("[system] the edge is not ready: start the stack (see bench/README.md)")
    if not procs.port_free(INSTANT_PORT):
        sys.exit(f"[system] port {INSTANT_PORT} is taken; the bench catalogue needs it for nginx")
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    seed = args.seed if args.seed is not None else time.time_ns() % (1 << 31)
    nginx = procs.start(
        name="system-nginx",
        cmd=instant.prepare(prefix=VAR / "nginx-system", port=INSTANT_PORT),
        log_dir=VAR / "logs",
    )
    result: dict[str, Any] = {
        "started_at": started_at,
        "tenants": args.tenants,
        "chunks": args.chunks,
        "cache_entries": args.cache_entries,
        "rate": args.rate,
        "duration_s": args.duration,
        "seed": seed,
        "warm": args.warm,
        "modes": {},
    }
    try:
        procs.wait_until(
            lambda: procs.http_status(f"http://127.0.0.1:{INSTANT_PORT}/healthz")[0] == 200,
            proc=nginx,
            timeout_s=15,
            what="nginx",
        )
        log(f"tenants: {args.tenants} (load {load_average()})")
        tenants = prepare_tenants(args)
        if args.no_fill:
            result["fill"] = "skipped (--no-fill: collections filled by an earlier run)"
        else:
            log(f"chunks: {args.chunks} per tenant, retrieval stopped while Chroma is written")
            with retrieval_stopped():
                result["fill"] = fill_chunks(tenants, args.chunks, seed=7)
                if args.cache_entries:
                    result["cache_fill"] = fill_cache_entries(tenants, args.cache_entries, seed=9)
            log(f"filled: {result['fill']}")
            time.sleep(20)  # settle: consumers rejoin their groups, caches warm, GC
        tenant_ids = [t.tenant_id for t in tenants]
        if args.no_fill and not chunks_filled(tenant_ids, read_filled(), args.chunks):
            log("new tenants (a restarted broker): the filled collections are renamed to theirs")
            with retrieval_stopped():
                result["fill"] = reuse_fill(tenants, args.chunks)
            time.sleep(20)  # settle, as after a fill
        result["chunks_filled"] = chunks_filled(tenant_ids, read_filled(), args.chunks)
        if not result["chunks_filled"]:
            log(
                f"WARNING: these tenants' documents collections do not hold {args.chunks} chunks "
                "(new tenants on a restarted broker?): searches run over empty collections"
            )
        result["rss_at_rest_mb"] = gateway_run.tenantry_rss_mb()
        result["load_at_rest"] = load_average()
        log(f"RSS at rest: {result['rss_at_rest_mb']} (load {result['load_at_rest']})")
        url = f"{args.edge_url}{tenantry.CHAT_COMPLETIONS_PATH}"
        rng = random.Random(seed)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            questions = [question(rng) for _ in tenants] if mode == "cache-hit" else None
            warm_seed = rng.randrange(1 << 30) if args.warm and mode != "gateway" else None
            tokens, warm = ready_mode(
                args, tenants, mode, url=url, questions=questions, warm_seed=warm_seed
            )
            runs: dict[str, Any] = {}
            if warm is not None:
                runs["warm-up"] = warm
            runs["sequential"] = asyncio.run(
                run_load(
                    url=url,
                    tokens=tokens,
                    questions=questions,
                    rate=args.probe,
                    duration_s=1,
                    seed=rng.randrange(1 << 30),
                    sequential=True,
                )
            )
            runs[f"{args.rate:g}/s"] = asyncio.run(
                run_load(
                    url=url,
                    tokens=tokens,
                    questions=questions,
                    rate=args.rate,
                    duration_s=args.duration,
                    seed=rng.randrange(1 << 30),
                )
            )
            result["modes"][mode] = runs
            log(f"{mode}: {json.dumps(runs)}")
            if args.find_max:
                log(f"{mode}: the highest sustained rate (p99 ≤ {args.max_p99_ms:g} ms)")

                def step(
                    rate: float,
                    mode: str = mode,
                    tokens: list[str] = tokens,
                    q: list[str] | None = questions,
                ) -> dict[str, Any]:
                    if args.max_fresh_stack:
                        log(f"  {rate:g}/s: a fresh stack, the tenants onboarded and warmed")
                        restart_stack()
                        fresh = prepare_tenants(args)
                        if mode != "gateway":
                            with retrieval_stopped():
                                reuse_fill(fresh, args.chunks)
                        filled_now = chunks_filled(
                            [t.tenant_id for t in fresh], read_filled(), args.chunks
                        )
                        tokens, _ = ready_mode(
                            args,
                            fresh,
                            mode,
                            url=url,
                            questions=q,
                            warm_seed=rng.randrange(1 << 30),
                        )
                        time.sleep(FRESH_SETTLE_S)
                    else:
                        filled_now = result["chunks_filled"]
                    time.sleep(2)  # the previous step's answers are in; consumers settle
                    return {"chunks_filled": filled_now} | asyncio.run(
                        run_load(
                            url=url,
                            tokens=tokens,
                            questions=q,
                            rate=rate,
                            duration_s=args.max_step_s,
                            seed=rng.randrange(1 << 30),
                        )
                    )

                result.setdefault("highest", {})[mode] = find_highest_rate(
                    step, rates, max_p99_ms=args.max_p99_ms
                )
        result["rss_after_mb"] = gateway_run.tenantry_rss_mb()
    finally:
        nginx.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    (RESULTS / f"{started_at}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / "latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
