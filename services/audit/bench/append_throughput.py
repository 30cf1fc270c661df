"""Rough throughput of the audit log on this machine: appends (one per transaction, as the
consumer does, and batched), and verify. Uses a throwaway database; prints, asserts nothing.

    .venv/bin/python services/audit/bench/append_throughput.py [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import asyncpg
from tenantry_audit.app import MIGRATIONS
from tenantry_audit.config import writer_dsn_for
from tenantry_audit.service import append_records, verify_chain
from tenantry_common.db import create_engine, run_migrations
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType


def _event(tenant: uuid.UUID, n: int) -> AuditRecorded:
    return AuditRecorded(
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


async def main(events: int, tenants: int) -> None:
    name = f"tenantry_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    owner = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.to_thread(run_migrations, owner, MIGRATIONS)
        engine = create_engine(writer_dsn_for(owner), pool_size=4)
        ids = [uuid.uuid4() for _ in range(tenants)]

        single = [_event(ids[n % tenants], n) for n in range(events)]
        started = time.perf_counter()
        for event in single:
            await append_records(engine=engine, events=[event])
        one_s = time.perf_counter() - started
        print(f"one event per transaction: {events / one_s:8.0f} events/s")

        for batch in (100, 1000):
            batched = [_event(ids[n % tenants], n) for n in range(events)]
            started = time.perf_counter()
            for offset in range(0, events, batch):
                await append_records(engine=engine, events=batched[offset : offset + batch])
            took = time.perf_counter() - started
            print(f"batches of {batch:5}:         {events / took:8.0f} events/s")

        started = time.perf_counter()
        checked = 0
        for tenant in ids:
            checked += (await verify_chain(engine=engine, tenant_id=tenant)).checked
        took = time.perf_counter() - started
        print(f"verify:                    {checked / took:8.0f} records/s ({checked} records)")
        await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.tenants))
