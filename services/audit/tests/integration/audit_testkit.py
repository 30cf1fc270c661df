"""Test helpers for audit's integration tests: event factories and an Ed25519 token issuer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from tenantry_audit.app import MIGRATIONS
from tenantry_audit.config import AuditSettings, writer_dsn_for
from tenantry_common.db import run_migrations
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType
from tenantry_common.testing.tokens import TestIssuer as TestIssuer  # re-exported for the tests


def make_event(
    tenant_id: uuid.UUID,
    n: int = 0,
    *,
    occurred_at: datetime | None = None,
    **fields: object,
) -> AuditRecorded:
    """An AuditRecorded for tests; ``n`` ends up in ``resource_id``."""
    values: dict[str, object] = {
        "tenant_id": tenant_id,
        "audit_type": AuditType.DATA_ACCESS,
        "source": "test",
        "actor": "user-1",
        "resource_type": "document",
        "resource_id": f"doc-{n}",
        "action": "read",
        "status": AuditStatus.SUCCESS,
        "ip_address": "10.0.0.1",
        "user_agent": "pytest",
        "details": {"n": n, "bytes": 1024, "ratio": 0.5, "flag": True, "none": None},
    }
    if occurred_at is not None:
        values["occurred_at"] = occurred_at
    values.update(fields)
    return AuditRecorded.model_validate(values)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def read_topic(
    bootstrap: str,
    topic: str,
    predicate: Any,
    *,
    expect: int = 1,
    timeout_s: float = 20.0,
) -> list[Any]:
    """Records of a topic (from the beginning) whose decoded value matches ``predicate``."""
    import asyncio
    import json

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(found) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    try:
                        value = json.loads(record.value)
                    except ValueError:
                        continue  # another test's deliberately malformed record
                    if predicate(value):
                        found.append(value)
    finally:
        await consumer.stop()
    return found


async def wait_for(predicate: Any, *, timeout_s: float = 20.0, interval_s: float = 0.1) -> None:
    """Poll an async predicate until it holds."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


async def new_audit_settings(make_database: Any, kafka_bootstrap: str) -> AuditSettings:
    """Settings on a new database, migrated as the owner; no background jobs, no auto-migrate."""
    owner_dsn = await make_database("audit")
    await asyncio.to_thread(run_migrations, owner_dsn, MIGRATIONS)
    return AuditSettings(
        environment="test",
        postgres_dsn=owner_dsn,
        writer_dsn=writer_dsn_for(owner_dsn),
        kafka_bootstrap_servers=kafka_bootstrap,
        migrate_on_start=False,
        background_jobs=False,
        consumer_retry_backoff_s=0.01,
    )


async def rewrite_tail(superuser: Any, tenant_id: uuid.UUID, from_sequence: int) -> None:
    """What a careful superuser does: rewrites records ``from_sequence``.. (action changed) with
    every hash recomputed, and the head row to match, so the chain is consistent again."""
    from tenantry_audit.chain import RecordContent, link_hash

    rows = await superuser.fetch(
        "SELECT * FROM audit_records WHERE tenant_id = $1 AND sequence >= $2 ORDER BY sequence",
        tenant_id,
        from_sequence,
    )
    prev = rows[0]["prev_hash"]
    async with superuser.transaction():
        for row in rows:
            content = RecordContent.from_row({**dict(row), "action": "nothing-to-see"})
            content_hash = content.content_hash()
            chain_hash = link_hash(prev, row["sequence"], content_hash)
            await superuser.execute(
                "UPDATE audit_records SET action = $3, content_hash = $4, prev_hash = $5, "
                "hash = $6 WHERE tenant_id = $1 AND sequence = $2",
                tenant_id,
                row["sequence"],
                "nothing-to-see",
                content_hash,
                prev,
                chain_hash,
            )
            prev = chain_hash
        await superuser.execute(
            "UPDATE audit_chain_heads SET hash = $2 WHERE tenant_id = $1", tenant_id, prev
        )
