"""Sustained usage events/s into metering's ledger, against a raw batched INSERT, in one run.

    .venv/bin/python bench/metering/bench_ingest.py [--events 50000] [--tenants 50]

1. Starts a Tansu broker of its own, creates the topics, and fills ``usage.v1`` with N
   UsageRecorded events (before timing: the consumer, not the producer, is measured).
2. Starts the real metering app (its lifespan: migrations, broker, batch consumer, Redis
   settlement, aggregates, budget checks, rollups) on a fresh database and times the ledger
   from its first to its last row (sustained rate), polling ``count(*)``.
3. In the same database, inserts the same N rows into a copy of the ledger table (same
   columns, same primary key) with plain batched INSERTs of ``--batch`` rows (1,000): asyncpg
   ``executemany`` per batch in one transaction each, and one multi-row
   ``INSERT … SELECT unnest(…)`` per batch. The consumer's batch size is ``--consumer-batch``
   (default: the service's own, ``usage_batch_max_records``).
4. Prints both and the ratio, and writes them as JSON next to this script (``results/``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager
from tenantry_common.db import ensure_database
from tenantry_common.events import Reservation, UsageRecorded
from tenantry_common.ids import derived_id
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import ensure_topics
from tenantry_common.settings import LOCAL_MODEL
from tenantry_common.topics import USAGE, all_topics_with_dlqs
from tenantry_metering.app import build_app
from tenantry_metering.config import Settings
from tenantry_metering.service import fingerprint

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def make_events(n: int, tenants: int, end_users: int = 0) -> list[UsageRecorded]:
    """``n`` usage events over ``tenants``; with ``end_users``, each names one of that many end
    users per tenant (their settlement then also moves the end users' counters)."""
    tenant_ids = [uuid.uuid4() for _ in range(tenants)]
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        request_id = uuid.uuid4()
        occurred = now - timedelta(seconds=i % 3600)
        events.append(
            UsageRecorded(
                event_id=derived_id(request_id, "usage"),
                tenant_id=tenant_ids[i % tenants],
                occurred_at=occurred,
                request_id=request_id,
                user_id=f"user-{i % 97}",
                end_user=f"end-user-{i % end_users}" if end_users else None,
                model=LOCAL_MODEL if i % 3 else "gpt-4o-mini",
                prompt_tokens=100 + i % 500,
                completion_tokens=20 + i % 200,
                reservation=Reservation(reserved_tokens=1000, period_day=occurred.date()),
                source="bench",
            )
        )
    return events


async def fill_topic(bootstrap: str, events: list[UsageRecorded]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [
            await producer.send(
                USAGE.name,
                e.model_dump_json().encode(),
                key=str(e.tenant_id).encode(),
                headers=[("content-type", b"application/json")],
            )
            for e in events
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def ledger_count(conn: asyncpg.Connection, table: str = "usage_ledger") -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608


async def run_consumer(settings: Settings, n: int, dbname: str, timeout_s: float) -> dict:
    """Run the real metering app until the ledger holds ``n`` rows; rates from the ledger.

    The rate comes from the rows' ``recorded_at`` (their transaction's start), not from
    polling ``count(*)``: a poll every 50 ms made Postgres count a growing table 20 times a
    second, CPU that the raw baseline does not pay. The poll below, twice a second, only
    says when the consumer is done.
    """
    app = build_app(settings)
    conn = await asyncpg.connect(**PG, database=dbname)
    started = time.perf_counter()
    done = asyncio.Event()

    async def poll() -> None:
        while True:
            try:
                count = await ledger_count(conn)
            except asyncpg.UndefinedTableError:
                count = 0  # not migrated yet
            if count >= n or time.perf_counter() - started > timeout_s:
                done.set()
                return
            await asyncio.sleep(0.5)

    poller = asyncio.create_task(poll())
    try:
        async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60):
            await done.wait()
            await poller
        elapsed = time.perf_counter() - started
        # Rows per transaction start: the first transaction's rows are not counted (their
        # start is the clock's zero), the last one's are (its start is the clock's end).
        per_start = await conn.fetch(
            "SELECT extract(epoch FROM recorded_at)::float8 AS t, count(*) AS rows "
            "FROM usage_ledger GROUP BY recorded_at ORDER BY recorded_at"
        )
    finally:
        await conn.close()
    rows = sum(r["rows"] for r in per_start)
    first_t, last_t = per_start[0]["t"], per_start[-1]["t"]
    span = max(last_t - first_t, 1e-9)

    def at(fraction: float) -> tuple[float, int]:
        seen = 0
        for r in per_start:
            seen += r["rows"]
            if seen >= n * fraction:
                return r["t"], seen
        return last_t, seen

    (t10, c10), (t90, c90) = at(0.1), at(0.9)
    return {
        "rows": rows,
        "transactions": len(per_start),
        "seconds_first_to_last_transaction": round(span, 3),
        "events_per_s_sustained": round((rows - per_start[0]["rows"]) / span),
        "events_per_s_10_to_90_percent": round((c90 - c10) / max(t90 - t10, 1e-9)),
        "seconds_from_app_start_incl_migrations": round(elapsed, 3),
    }


def raw_rows(events: list[UsageRecorded]) -> list[tuple]:
    return [
        (
            e.tenant_id,
            e.event_id,
            e.request_id,
            e.occurred_at,
            e.occurred_at.astimezone(UTC).date(),
            e.model,
            e.user_id,
            e.source,
            e.prompt_tokens,
            e.completion_tokens,
            e.cached,
            0,
            True,
            fingerprint(e),
        )
        for e in events
    ]


COLUMNS = (
    "tenant_id, event_id, request_id, occurred_at, day, model, user_id, source, prompt_tokens, "
    "completion_tokens, cached, cost_micros, priced, payload_sha256"
)


async def run_raw(dbname: str, rows: list[tuple], batch: int) -> dict:
    conn = await asyncpg.connect(**PG, database=dbname)
    results = {}
    try:
        for variant in ("executemany", "unnest"):
            table = f"bench_raw_{variant}"
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (LIKE usage_ledger INCLUDING ALL)")
            started = time.perf_counter()
            for i in range(0, len(rows), batch):
                chunk = rows[i : i + batch]
                async with conn.transaction():
                    if variant == "executemany":
                        await conn.executemany(
                            f"INSERT INTO {table} ({COLUMNS}) VALUES "  # noqa: S608
                            "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
                            chunk,
                        )
                    else:
                        columns = list(zip(*chunk, strict=True))
                        await conn.execute(
                            f"INSERT INTO {table} ({COLUMNS}) SELECT * FROM unnest("  # noqa: S608
                            "$1::uuid[],$2::uuid[],$3::uuid[],$4::timestamptz[],$5::date[],"
                            "$6::varchar[],$7::varchar[],$8::varchar[],$9::bigint[],$10::bigint[],"
                            "$11::boolean[],$12::bigint[],$13::boolean[],$14::bytea[])",
                            *columns,
                        )
            elapsed = time.perf_counter() - started
            assert await ledger_count(conn, table) == len(rows)
            results[variant] = {
                "seconds": round(elapsed, 3),
                "rows_per_s": round(len(rows) / elapsed),
            }
    finally:
        await conn.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument(
        "--batch", type=int, default=1000, help="rows per transaction of the raw INSERT baseline"
    )
    parser.add_argument(
        "--consumer-batch",
        type=int,
        default=None,
        help="the consumer's max records per batch (default: the service's own default)",
    )
    parser.add_argument(
        "--end-users",
        type=int,
        default=0,
        help="each event names one of this many end users (default none); the raw baseline "
        "writes no end_user either way",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    port = free_port()
    log_dir = ROOT / "var" / "log" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    tansu = start_tansu(port, log_dir / f"tansu-metering-{port}.log")
    dbname = f"tenantry_bench_metering_{uuid.uuid4().hex[:8]}"
    try:
        bootstrap = f"127.0.0.1:{port}"
        await ensure_topics(bootstrap, all_topics_with_dlqs())
        events = make_events(args.events, args.tenants, args.end_users)
        produce_s = await fill_topic(bootstrap, events)
        print(f"filled usage.v1 with {len(events)} events in {produce_s:.1f}s")
        consumer_batch = args.consumer_batch or Settings().usage_batch_max_records
        settings = Settings(
            environment="test",
            postgres_dsn=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
            kafka_bootstrap_servers=bootstrap,
            usage_group_id=f"metering.usage.bench-{uuid.uuid4().hex[:6]}",
            usage_batch_max_records=consumer_batch,
            log_level="WARNING",
        )
        await ensure_database(settings.postgres_dsn)
        consumer = await run_consumer(settings, len(events), dbname, args.timeout)
        print("consumer:", consumer)
        raw = await run_raw(dbname, raw_rows(events), args.batch)
        print("raw batched INSERT:", raw)
        best_raw = max(v["rows_per_s"] for v in raw.values())
        rate = consumer["events_per_s_sustained"]
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "events": len(events),
            "tenants": args.tenants,
            "end_users": args.end_users,
            "batch": args.batch,
            "consumer_batch": consumer_batch,
            "consumer_batch_parts": settings.usage_batch_parts,
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
            "consumer": consumer,
            "raw_batched_insert": raw,
            "ratio_to_fastest_raw": round(rate / best_raw, 3),
            "targets": {
                "events_per_s>=5000": rate >= 5000,
                "ratio>=0.25": rate / best_raw >= 0.25,
            },
        }
        print(json.dumps(result, indent=2))
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%S}.json").write_text(
            json.dumps(result, indent=2) + "\n"
        )
    finally:
        stop_process(tansu)
        admin = await asyncpg.connect(**PG, database="postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
