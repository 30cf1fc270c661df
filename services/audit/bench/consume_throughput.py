"""The audit consumer's throughput through a real broker: events/s from ``audit.v1`` into the
chains, with the service's own subscriber (``register_handlers``), so it measures whatever the
code does. Bounded: its own Tansu broker and throwaway database, a hard timeout; prints, and
appends one JSON line to ``bench/results.jsonl``; asserts nothing.

    .venv/bin/python services/audit/bench/consume_throughput.py [--events 5000] [--tenants 50]
        [--set records_batch_max_records=500 ...]

The rate is measured from the first appended record to the last (the consumer group's join,
which takes seconds on Tansu, is reported separately), with every event already on the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from tenantry_audit.app import MIGRATIONS
from tenantry_audit.config import AuditSettings, writer_dsn_for
from tenantry_audit.handlers import register_handlers
from tenantry_audit.metrics import AuditMetrics
from tenantry_common.db import create_engine, run_migrations
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import build_broker, ensure_topics
from tenantry_common.topics import AUDIT, DLQ_SUFFIX, TopicSpec

RESULTS = Path(__file__).parent / "results.jsonl"


def _event(tenant: uuid.UUID, n: int) -> bytes:
    return (
        AuditRecorded(
            tenant_id=tenant,
            audit_type=AuditType.API_CALL,
            source="bench",
            actor="user-1",
            resource_type="chat",
            resource_id=str(n),
            action="ask",
            status=AuditStatus.SUCCESS,
            ip_address="10.0.0.1",
            user_agent="bench",
            details={"prompt_tokens": 120, "completion_tokens": 80, "cached": False},
        )
        .model_dump_json()
        .encode()
    )


async def _produce(bootstrap: str, events: int, tenants: int) -> None:
    ids = [uuid.uuid4() for _ in range(tenants)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                AUDIT.name, _event(ids[n % tenants], n), key=str(ids[n % tenants]).encode()
            )
            for n in range(events)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM audit_records"))


async def measure(
    bootstrap: str, owner_dsn: str, events: int, tenants: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    await ensure_topics(bootstrap, [AUDIT, TopicSpec(AUDIT.name + DLQ_SUFFIX, 1)])
    await _produce(bootstrap, events, tenants)
    settings = AuditSettings(
        environment="test",
        postgres_dsn=owner_dsn,
        writer_dsn=writer_dsn_for(owner_dsn),
        kafka_bootstrap_servers=bootstrap,
        migrate_on_start=False,
        background_jobs=False,
        **overrides,
    )
    registry = CollectorRegistry()
    broker: KafkaBroker = build_broker(settings, registry=registry)
    engine = create_engine(settings.writer_dsn, pool_size=4)
    register_handlers(
        broker,
        settings=settings,
        engine=engine,
        metrics=AuditMetrics(registry),
        group_prefix=f"bench{uuid.uuid4().hex[:6]}.",
    )
    db = owner_dsn.replace("postgresql+asyncpg://", "postgresql://")
    watcher = await asyncpg.connect(db)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await broker.start()
        first_at: float | None = None
        first_count = 0
        count = 0
        while count < events:
            await asyncio.sleep(0.05)
            count = await _count(watcher)
            if first_at is None and count:
                first_at, first_count = loop.time(), count
        ended = loop.time()
    finally:
        await broker.stop()
        await engine.dispose()
        await watcher.close()
    assert first_at is not None
    # None: every event landed between two polls (use more events to resolve the rate).
    steady = None if first_count == events else round((events - first_count) / (ended - first_at))
    return {
        "events": events,
        "tenants": tenants,
        "overrides": overrides,
        "join_s": round(first_at - started, 2),
        "consume_s": round(ended - first_at, 2),
        "events_per_s": steady,
        "overall_events_per_s": round(events / (ended - started)),
    }


async def main(
    events: int, tenants: int, overrides: dict[str, Any], timeout_s: float, label: str
) -> None:
    name = f"tenantry_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    owner = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    port = free_port()
    tansu: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(run_migrations, owner, MIGRATIONS)
        tansu = start_tansu(port, Path("var/log") / f"bench-audit-tansu-{port}.log")
        result = await asyncio.wait_for(
            measure(f"127.0.0.1:{port}", owner, events, tenants, overrides), timeout_s
        )
        result = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "label": label,
            "load_average_1m": round(os.getloadavg()[0], 2),
            **result,
        }
        print(json.dumps(result))
        with RESULTS.open("a") as out:
            out.write(json.dumps(result) + "\n")
    finally:
        if tansu is not None:
            stop_process(tansu)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, json.loads(value) if value[:1].isdigit() else value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--set", action="append", default=[], help="AuditSettings key=value")
    parser.add_argument("--label", default="", help="What this run measures (kept in results).")
    args = parser.parse_args()
    overrides = dict(map(_override, args.set))
    asyncio.run(main(args.events, args.tenants, overrides, args.timeout_s, args.label))
