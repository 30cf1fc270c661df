"""The local broker's aging: does a Tansu (memory storage) fetch cost more as its log grows,
and can the log be trimmed?

Starts its own Tansu on ``--port`` (not the stack's), and on one single-partition topic
measures a produce + fetch round trip of one 300-byte record (``--trips`` of them: median
latency, and Tansu's CPU per round trip from ``/proc``), first on an empty log, then after each
``--step`` more records, each produced as its own batch (as requests arrive at a low rate).
At each size it also polls the partition's end for ``--idle-s`` seconds, fetches that find
nothing (as a hot consumer between requests), and reports the broker's cores meanwhile. Then
it asks the broker to delete the records below the high watermark (Kafka's DeleteRecords, what
a retention job would do) and reports what the broker answered.

    .venv/bin/python bench/broker/bench_tansu_aging.py --steps 2 --step 10000

Writes ``bench/broker/results/<UTC start>.json``. Not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from tenantry_common.localstack import start_tansu

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "bench" / "gateway"))

import procs  # noqa: E402  (the broker runs in a session of its own: its pid is its group)

TOPIC = "aging"


async def round_trips(
    producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, tp: TopicPartition, trips: int, pid: int
) -> dict[str, float]:
    """Median produce → fetched latency of one record, and the broker's CPU per round trip."""
    latencies = []
    cpu_before = procs.group_cpu_s(pid)
    for _ in range(trips):
        started = time.perf_counter()
        await producer.send_and_wait(TOPIC, b"x" * 300, partition=0)
        while not await consumer.getmany(tp, timeout_ms=2_000, max_records=1_000):
            pass
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "broker_cpu_ms_per_trip": round((procs.group_cpu_s(pid) - cpu_before) / trips * 1000, 3),
    }


async def empty_polls(
    consumer: AIOKafkaConsumer, tp: TopicPartition, seconds: float, pid: int
) -> dict[str, float]:
    """The broker's cores while the consumer, at the partition's end, fetches nothing."""
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    cpu_before = procs.group_cpu_s(pid)
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        await consumer.getmany(tp, timeout_ms=200)
    return {"broker_cores_empty_polling": round((procs.group_cpu_s(pid) - cpu_before) / elapsed, 3)}


async def measure_size(
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    args: argparse.Namespace,
    pid: int,
) -> dict[str, float]:
    """Round trips, then empty polls, at the log's current size."""
    return await round_trips(producer, consumer, tp, args.trips, pid) | await empty_polls(
        consumer, tp, args.idle_s, pid
    )


async def measure(args: argparse.Namespace, pid: int) -> dict[str, Any]:
    servers = f"127.0.0.1:{args.port}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=False)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=5)
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
        await producer.start()
        await consumer.start()
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        rows = [{"records_in_log": 0, **await measure_size(producer, consumer, tp, args, pid)}]
        print(rows[-1], flush=True)
        for _ in range(args.steps):
            consumer.pause(tp)  # no fetches while the log grows: only the round trips measure
            for _ in range(args.step):
                # send_and_wait, one at a time: each record is its own batch, as at a low rate.
                await producer.send_and_wait(TOPIC, b"y" * 300, partition=0)
            consumer.resume(tp)
            await consumer.seek_to_end(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            rows.append(
                {
                    "records_in_log": end,
                    **await measure_size(producer, consumer, tp, args, pid),
                }
            )
            print(rows[-1], flush=True)
        end = (await consumer.end_offsets([tp]))[tp]
        try:
            answer = await asyncio.wait_for(
                admin.delete_records({tp: RecordsToDelete(end)}), timeout=10
            )
            delete_records = f"low watermark now {answer.get(tp)}"
        except Exception as exc:  # what the broker does is the finding, whatever it is
            delete_records = f"failed: {type(exc).__name__}: {exc}"
        print("DeleteRecords:", delete_records, flush=True)
        return {"rows": rows, "delete_records": delete_records}
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=19092)
    parser.add_argument("--trips", type=int, default=200, help="round trips per measurement")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--step", type=int, default=10_000, help="records added per step")
    parser.add_argument(
        "--idle-s", type=float, default=5.0, help="seconds of empty polls per measurement"
    )
    args = parser.parse_args()
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log_path = ROOT / "var" / "bench" / "logs" / "tansu-aging.log"
    broker = start_tansu(args.port, log_path)
    try:
        result = asyncio.run(measure(args, broker.pid))
        result["broker_alive_after"] = broker.poll() is None
    finally:
        broker.kill()
        broker.wait()
    result |= {"started_at": started_at, "trips": args.trips, "log": str(log_path)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{started_at}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
