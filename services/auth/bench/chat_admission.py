"""The edge's own time per chat request: from HTTP in to the request published.

    .venv/bin/python services/auth/bench/chat_admission.py                  # 400 requests
    .venv/bin/python services/auth/bench/chat_admission.py --requests 1000 --json out.jsonl

One edge app in this process (``build_app``, driven through ``httpx.ASGITransport``), in gateway
mode (RAG and cache off), against a private Tansu broker, a fresh database on the local
Postgres and the local Redis; an instant stand-in for retrieval+inference answers every
request on its reply partition (ContextRetrieved on ``chat.context.v1``, which the edge sends in
gateway mode, or ChatRequested on ``chat.requests.v1``, which an older edge sends).
``POST /v1/chat/completions`` is sent one request at a time, rotating over the tenants' member
tokens. Per request it records:

* ``admission``: from the request entering the ASGI app to the edge's publish of the request
  returning (token check, tenant access, configuration, rate limit, budget, publish);
* ``round_trip``: the whole request as the client sees it (adds the reply's broker hops);
* ``cpu_ms_per_request``: this process's CPU time over the measured requests, divided by their
  number (edge, client and stand-in together; less sensitive than wall time to the load of a
  shared machine);
* the SQL statements the edge ran for it (SQLAlchemy ``before_cursor_execute`` on its engine,
  counted in the requests' context only: the edge's background jobs are not counted).

The first ``--warmup`` requests are not counted. To compare two versions of the edge in one
run, point ``PYTHONPATH`` at the other version's ``src`` directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import tenantry_auth
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from asgi_lifespan import LifespanManager
from sqlalchemy import event
from tenantry_auth.app import build_app
from tenantry_auth.config import Settings
from tenantry_common.events import (
    ChatCompleted,
    ChatRequested,
    ContextRetrieved,
    LifecycleAction,
    TenantLifecycleAcknowledged,
    TokenUsage,
    parse_event,
)
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import ensure_topics
from tenantry_common.topics import CHAT_CONTEXT, CHAT_REQUESTS, all_topics_with_dlqs

ROOT = Path(__file__).resolve().parents[3]
LOG_DIR = ROOT / "var" / "log" / "bench"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
OPERATOR_SECRET = "bench-operator-secret-0123456789"  # noqa: S105 (a bench-only secret)
SERVICES = ("retrieval", "inference", "metering", "audit")
_measured: contextvars.ContextVar[bool] = contextvars.ContextVar("measured", default=False)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {
        "mean": round(statistics.fmean(ordered), 2),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
    }


async def responder(bootstrap: str, producer: AIOKafkaProducer) -> None:
    """Answer every request at once, on the partition it names."""
    consumer = AIOKafkaConsumer(
        CHAT_REQUESTS.name,
        CHAT_CONTEXT.name,
        bootstrap_servers=bootstrap,
        group_id=f"bench-responder-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    request = parse_event(record.value)
                    assert isinstance(request, ChatRequested | ContextRetrieved)
                    completed = ChatCompleted(
                        tenant_id=request.tenant_id,
                        request_id=request.request_id,
                        user_id=request.user_id,
                        question=request.question,
                        answer="ok",
                        model=request.options.model,
                        usage=TokenUsage(prompt_tokens=5, completion_tokens=1),
                        config_version=request.options.config_version,
                        corpus_version=0,
                    )
                    await producer.send_and_wait(
                        request.reply_to.topic,
                        completed.model_dump_json().encode(),
                        key=str(request.tenant_id).encode(),
                        partition=request.reply_to.partition,
                    )
    finally:
        await consumer.stop()


async def token(c: httpx.AsyncClient, client_id: str, secret: str) -> str:
    r = await c.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


async def onboard(
    c: httpx.AsyncClient, producer: AIOKafkaProducer, operator: str, model: str
) -> str:
    """An active enterprise tenant in gateway mode; returns a member token."""
    auth = {"Authorization": f"Bearer {operator}"}
    r = await c.post(
        "/v1/tenants",
        json={
            "name": f"bench-{uuid.uuid4().hex[:6]}",
            "tier": "enterprise",
            "admin_contact": "a@b.c",
        },
        headers=auth,
    )
    r.raise_for_status()
    created = r.json()
    tenant_id = uuid.UUID(created["tenant_id"])
    for service in SERVICES:
        ack = TenantLifecycleAcknowledged(
            tenant_id=tenant_id, service=service, action=LifecycleAction.PROVISIONED, succeeded=True
        )
        await producer.send_and_wait(
            "tenants.lifecycle.v1", ack.model_dump_json().encode(), key=str(tenant_id).encode()
        )
    for _ in range(300):
        if (await c.get(f"/v1/tenants/{tenant_id}", headers=auth)).json()["status"] == "active":
            break
        await asyncio.sleep(0.1)
    admin_token = await token(c, created["client_id"], created["client_secret"])
    admin = {"Authorization": f"Bearer {admin_token}"}
    gateway = {
        "model": model,
        "features": {"rag": False, "semantic_cache": False, "streaming": True},
        "max_tokens_per_request": 64,
    }
    (await c.put("/v1/config", json=gateway, headers=admin)).raise_for_status()
    member = (await c.post("/v1/clients", json={"role": "member"}, headers=admin)).json()
    return await token(c, member["client_id"], member["client_secret"])


async def run(args: argparse.Namespace, bootstrap: str, dsn: str) -> dict[str, Any]:
    settings = Settings(
        environment="local",
        kafka_bootstrap_servers=bootstrap,
        postgres_dsn=dsn,
        redis_url="redis://127.0.0.1:6379/0",
        bootstrap_operator_secret=OPERATOR_SECRET,
        reply_lease_namespace=f"tenantry:bench:{uuid.uuid4().hex[:8]}:reply-partition",
        log_level="WARNING",
    )
    app = build_app(settings)
    edge = app.state.edge
    engine = edge.sessions.kw["bind"]
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _measured.get():
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    published_at: dict[uuid.UUID, float] = {}
    original_publish = edge.publish

    async def timed_publish(topic: Any, ev: Any) -> None:
        await original_publish(topic, ev)
        if isinstance(ev, ChatRequested | ContextRetrieved):
            published_at[ev.request_id] = time.perf_counter()

    edge.publish = timed_publish
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    answering = asyncio.create_task(responder(bootstrap, producer))
    admission: list[float] = []
    round_trip: list[float] = []
    sql_per_request: list[int] = []
    try:
        async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://edge", timeout=30
            ) as c:
                operator = await token(c, "operator", OPERATOR_SECRET)
                model = next(iter(settings.models))
                members = [await onboard(c, producer, operator, model) for _ in range(args.tenants)]
                body = {"model": model, "messages": [{"role": "user", "content": "How are you?"}]}
                _measured.set(True)
                cpu_started = 0.0
                for i in range(args.warmup + args.requests):
                    if i == args.warmup:
                        cpu_started = time.process_time()
                    headers = {"Authorization": f"Bearer {members[i % len(members)]}"}
                    before_sql = len(statements)
                    started = time.perf_counter()
                    r = await c.post("/v1/chat/completions", json=body, headers=headers)
                    ended = time.perf_counter()
                    if r.status_code != 200:
                        raise RuntimeError(f"chat answered {r.status_code}: {r.text[:300]}")
                    request_id = uuid.UUID(r.headers["x-request-id"])
                    if i >= args.warmup:
                        admission.append((published_at[request_id] - started) * 1000)
                        round_trip.append((ended - started) * 1000)
                        sql_per_request.append(len(statements) - before_sql)
                cpu_ms = (time.process_time() - cpu_started) * 1000 / args.requests
    finally:
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        await producer.stop()
    return {
        "edge_source": str(Path(tenantry_auth.__file__).parent),
        "requests": args.requests,
        "tenants": args.tenants,
        "admission_ms": summary(admission),
        "round_trip_ms": summary(round_trip),
        "cpu_ms_per_request": round(cpu_ms, 2),
        "sql_statements_per_request": round(statistics.fmean(sql_per_request), 3),
    }


async def create_database(name: str, *, drop: bool = False) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        if drop:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path, help="append the result (one JSON line) here")
    args = parser.parse_args()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kafka_port = free_port()
    broker = start_tansu(kafka_port, LOG_DIR / f"admission-tansu-{kafka_port}.log")
    bootstrap = f"127.0.0.1:{kafka_port}"
    database = f"tenantry_bench_auth_{uuid.uuid4().hex[:10]}"
    load_before = load_average()
    try:
        asyncio.run(ensure_topics(bootstrap, all_topics_with_dlqs()))
        asyncio.run(create_database(database))
        dsn = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
        result = asyncio.run(run(args, bootstrap, dsn))
    finally:
        stop_process(broker)
        asyncio.run(create_database(database, drop=True))
    result = {
        "label": args.label,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": f"{load_before} → {load_average()}",
        "python": sys.version.split()[0],
    } | result
    print(json.dumps(result), flush=True)
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
