"""Periodic jobs and the CLI against real Postgres and the broker: anchors, retention records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta

import asyncpg
import pytest
from audit_testkit import make_event, read_topic
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import jobs, service
from tenantry_audit.config import AuditSettings
from tenantry_common.ids import utcnow
from tenantry_common.messaging import build_broker
from tenantry_common.topics import AUDIT, AUDIT_ANCHORS

pytestmark = pytest.mark.integration


async def test_chain_heads_are_published_as_anchors_once_per_change(
    audit_settings: AuditSettings, writer_engine: AsyncEngine
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await service.append_records(
        engine=writer_engine, events=[make_event(a, 0), make_event(a, 1), make_event(b, 0)]
    )
    broker = build_broker(audit_settings, client_id="test-anchors")
    async with broker:
        await broker.connect()
        publisher = jobs.AnchorPublisher(engine=writer_engine, broker=broker)
        assert await publisher.publish() == 2
        assert await publisher.publish() == 0, "unchanged heads are not published again"
        await service.append_records(engine=writer_engine, events=[make_event(a, 2)])
        assert await publisher.publish() == 1

    anchors = await read_topic(
        audit_settings.kafka_bootstrap_servers,
        AUDIT_ANCHORS.name,
        lambda v: v["tenant_id"] in (str(a), str(b)),
        expect=3,
    )
    head_a = await service.chain_head(engine=writer_engine, tenant_id=a)
    assert head_a is not None
    assert sorted((x["tenant_id"] == str(a), x["sequence"]) for x in anchors) == [
        (False, 1),
        (True, 2),
        (True, 3),
    ]
    latest = next(x for x in anchors if x["tenant_id"] == str(a) and x["sequence"] == 3)
    assert latest["head_hash"] == head_a.hash


async def test_retention_job_publishes_what_it_removed_and_the_record_joins_the_chain(
    audit_settings: AuditSettings, writer_engine: AsyncEngine
) -> None:
    tenant = uuid.uuid4()
    old = utcnow() - timedelta(days=400)
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, i, occurred_at=old) for i in range(3)] + [make_event(tenant, 3)],
    )
    broker = build_broker(audit_settings, client_id="test-retention")
    async with broker:
        await broker.connect()
        run = await jobs.run_retention(engine=writer_engine, settings=audit_settings, broker=broker)
    assert [(r.removed, r.checkpoint_sequence) for r in run.results] == [(3, 3)]
    published = await read_topic(
        audit_settings.kafka_bootstrap_servers,
        AUDIT.name,
        lambda v: v["tenant_id"] == str(tenant) and v["audit_type"] == "retention",
    )
    assert len(published) == 1
    assert published[0]["details"]["removed"] == 3
    assert published[0]["status"] == "success"
    # What the consumer does with it: appended behind the surviving record, chain intact.
    from tenantry_common.events import AuditRecorded

    await service.append_records(
        engine=writer_engine, events=[AuditRecorded.model_validate(published[0])]
    )
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert (report.start_sequence, report.head_sequence) == (3, 5)


async def _cli(settings: AuditSettings, *args: str) -> tuple[int, dict]:
    env = os.environ | {
        "TENANTRY_POSTGRES_DSN": settings.postgres_dsn,
        "TENANTRY_WRITER_DSN": settings.writer_dsn,
        "TENANTRY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tenantry_audit.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert out, err.decode()
    return proc.returncode, json.loads(out.decode().strip().splitlines()[-1])


async def test_cli_verify_and_retention_dry_run(
    audit_settings: AuditSettings, writer_engine: AsyncEngine, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    old = utcnow() - timedelta(days=500)
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, 0, occurred_at=old), make_event(tenant, 1)],
    )
    code, report = await _cli(audit_settings, "verify", "--tenant", str(tenant))
    assert code == 0
    assert report["ok"] is True
    assert report["records_checked"] == 2

    code, dry = await _cli(audit_settings, "retention", "--dry-run")
    assert code == 0
    assert [(t["tenant_id"], t["expired"], t["removed"]) for t in dry["tenants"]] == [
        (str(tenant), 1, 0)
    ]

    await superuser.execute(
        "UPDATE audit_records SET status = 'success', error = 'x' "
        "WHERE tenant_id = $1 AND sequence = 2",
        tenant,
    )
    code, report = await _cli(audit_settings, "verify", "--tenant", str(tenant))
    assert code == 1
    assert report["first_broken_link"]["sequence"] == 2
