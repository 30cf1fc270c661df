"""A rollup flush's rows published one acknowledgement at a time against metering's flush.

    .venv/bin/python bench/metering/bench_rollup_flush.py [--rows 2000] [--rounds 3]

Starts a Tansu broker of its own and, alternating in each round, publishes ``--rows``
``UsageRolledUp`` rows to ``usage.daily.v1``: one ``publish_event`` awaited after another (the
flush before it sent rows together), then through ``Runtime.flush_rollups`` (the service's own
code). Prints wall and process CPU seconds of each and writes them as JSON to ``results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import build_broker, ensure_topics, publish_event
from tenantry_common.settings import LOCAL_MODEL
from tenantry_common.topics import USAGE_DAILY, all_topics_with_dlqs
from tenantry_metering import service
from tenantry_metering.config import Settings
from tenantry_metering.metrics import MeteringMetrics
from tenantry_metering.repository import AggregateRow
from tenantry_metering.runtime import Runtime

HERE = Path(__file__).parent


def _rows(n: int) -> dict[tuple[uuid.UUID, date, str], AggregateRow]:
    day = datetime.now(UTC).date()
    rows = {}
    for _ in range(n):
        tenant = uuid.uuid4()
        rows[(tenant, day, LOCAL_MODEL)] = AggregateRow(
            tenant_id=tenant,
            period=day,
            model=LOCAL_MODEL,
            requests=3,
            cached_requests=1,
            prompt_tokens=300,
            completion_tokens=40,
            cost_micros=17,
            unpriced_requests=0,
        )
    return rows


async def _one_by_one(
    broker: KafkaBroker, rows: dict[tuple[uuid.UUID, date, str], AggregateRow]
) -> None:
    for (tenant, day, model), row in rows.items():
        await publish_event(
            broker,
            USAGE_DAILY,
            service.rollup_event(row),
            key=f"{tenant}:{day.isoformat()}:{model}".encode(),
        )


async def _timed(job: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await job()
    return time.perf_counter() - wall, time.process_time() - cpu


async def main(rows: int, rounds: int) -> None:
    port = free_port()
    proc = start_tansu(port, HERE.parent.parent / "var" / "log" / f"tansu-bench-{port}.log")
    bootstrap = f"127.0.0.1:{port}"
    results = []
    try:
        await ensure_topics(bootstrap, all_topics_with_dlqs())
        settings = Settings(environment="test", kafka_bootstrap_servers=bootstrap)
        broker = build_broker(settings)
        runtime = Runtime(
            settings=settings, broker=broker, metrics=MeteringMetrics(CollectorRegistry())
        )
        await broker.start()
        try:
            for n in range(rounds):
                seq = await _timed(functools.partial(_one_by_one, broker, _rows(rows)))
                runtime.dirty_rollups = _rows(rows)
                flush = await _timed(runtime.flush_rollups)
                results.append({"round": n, "sequential_s": seq, "flush_s": flush})
                print(
                    f"round {n}: one by one {seq[0]:.2f} s wall, {seq[1]:.2f} s CPU;"
                    f" flush_rollups {flush[0]:.2f} s wall, {flush[1]:.2f} s CPU"
                    f" ({seq[0] / flush[0]:.1f} times faster)",
                    flush=True,
                )
        finally:
            await broker.stop()
    finally:
        stop_process(proc)
    out = HERE / "results" / f"rollup-flush-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"rows": rows, "rounds": results}, indent=2) + "\n")
    print(f"written {out.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.rounds))
