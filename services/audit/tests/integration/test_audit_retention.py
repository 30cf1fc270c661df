"""Retention against real Postgres: exactly the expired records go and the chain still verifies."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest
from audit_testkit import make_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import service
from tenantry_common.ids import utcnow

pytestmark = pytest.mark.integration


async def _ages(engine: AsyncEngine, tenant: uuid.UUID) -> list[tuple[int, str]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT sequence, resource_id FROM audit_records "
                    "WHERE tenant_id = :t ORDER BY sequence"
                ),
                {"t": tenant},
            )
        ).all()
    return [(r.sequence, r.resource_id) for r in rows]


async def test_retention_removes_exactly_the_expired_records_and_verify_still_passes(
    writer_engine: AsyncEngine,
) -> None:
    now = utcnow()
    tenant, bystander = uuid.uuid4(), uuid.uuid4()
    cutoff = now - timedelta(days=365)
    ages = [
        ("old-1", now - timedelta(days=800)),
        ("old-2", now - timedelta(days=400)),
        ("old-3", cutoff - timedelta(seconds=5)),
        ("young-1", cutoff + timedelta(minutes=5)),
        # Late and expired, behind a younger record: removed too, leaving a tombstone.
        ("old-late", now - timedelta(days=500)),
        ("young-2", now - timedelta(days=10)),
        ("young-3", now),
    ]
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, 0, occurred_at=at, resource_id=rid) for rid, at in ages],
    )
    await service.append_records(
        engine=writer_engine,
        events=[make_event(bystander, i, occurred_at=now - timedelta(days=30)) for i in range(3)],
    )

    run = await service.apply_retention(engine=writer_engine, retention_days=365, now=now)

    assert [(r.tenant_id, r.removed, r.tombstoned, r.checkpoint_sequence) for r in run.results] == [
        (tenant, 4, 1, 3)
    ]
    assert await _ages(writer_engine, tenant) == [(4, "young-1"), (6, "young-2"), (7, "young-3")]
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok, report.first_break
    assert (report.start_sequence, report.checked, report.head_sequence) == (3, 4, 7)
    assert (await service.verify_chain(engine=writer_engine, tenant_id=bystander)).checked == 3

    # Appends go on after retention, and a second run has nothing to do.
    await service.append_records(engine=writer_engine, events=[make_event(tenant, 99)])
    again = await service.apply_retention(engine=writer_engine, retention_days=365, now=now)
    assert again.results == []
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.head_sequence == 8


async def test_a_tombstone_is_folded_into_the_checkpoint_once_the_prefix_expires(
    writer_engine: AsyncEngine,
) -> None:
    now = utcnow()
    tenant = uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[
            make_event(tenant, 0, occurred_at=now - timedelta(days=400)),
            make_event(tenant, 1, occurred_at=now - timedelta(days=380)),
            make_event(tenant, 2, occurred_at=now - timedelta(days=398)),
        ],
    )
    # A longer retention first: record 2 (380 days) stays, record 3 (398 days) goes behind it.
    first = await service.apply_retention(engine=writer_engine, retention_days=390, now=now)
    assert [(r.removed, r.tombstoned, r.checkpoint_sequence) for r in first.results] == [(2, 1, 1)]
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.checked == 2

    second = await service.apply_retention(engine=writer_engine, retention_days=365, now=now)
    assert [(r.removed, r.tombstoned, r.checkpoint_sequence) for r in second.results] == [(1, 0, 3)]
    async with writer_engine.connect() as conn:
        tombstones = (
            await conn.execute(
                text("SELECT count(*) FROM audit_retention_tombstones WHERE tenant_id = :t"),
                {"t": tenant},
            )
        ).scalar_one()
    assert tombstones == 0
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.checked == 0
    assert report.start_sequence == 3


async def test_retention_removes_the_whole_chain_when_everything_expired(
    writer_engine: AsyncEngine,
) -> None:
    now = utcnow()
    tenant = uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, i, occurred_at=now - timedelta(days=500 - i)) for i in range(4)],
    )
    run = await service.apply_retention(engine=writer_engine, retention_days=365, now=now)
    assert [(r.removed, r.checkpoint_sequence, r.tombstoned) for r in run.results] == [(4, 4, 0)]
    assert await _ages(writer_engine, tenant) == []
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.checked == 0
    assert report.start_sequence == 4
    await service.append_records(engine=writer_engine, events=[make_event(tenant, 10)])
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.checked == 1
    assert report.head_sequence == 5


async def test_retention_dry_run_changes_nothing(writer_engine: AsyncEngine) -> None:
    now = utcnow()
    tenant = uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, i, occurred_at=now - timedelta(days=400)) for i in range(3)],
    )
    run = await service.apply_retention(
        engine=writer_engine, retention_days=365, now=now, dry_run=True
    )
    assert [(r.expired, r.removed, r.dry_run) for r in run.results] == [(3, 0, True)]
    assert len(await _ages(writer_engine, tenant)) == 3


async def test_retention_refuses_to_erase_a_broken_chain(
    writer_engine: AsyncEngine, superuser: asyncpg.Connection
) -> None:
    now = utcnow()
    tenant = uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[make_event(tenant, i, occurred_at=now - timedelta(days=400)) for i in range(3)]
        + [make_event(tenant, 3)],
    )
    await superuser.execute(
        "UPDATE audit_records SET action = 'forged' WHERE tenant_id = $1 AND sequence = 2", tenant
    )
    run = await service.apply_retention(engine=writer_engine, retention_days=365, now=now)
    assert len(run.results) == 1
    refused = run.results[0].refused
    assert refused is not None
    assert refused.sequence == 2
    assert run.results[0].removed == 0
    assert len(await _ages(writer_engine, tenant)) == 4, "the evidence stays"


async def test_tampering_with_a_tombstone_or_checkpoint_is_detected(
    writer_engine: AsyncEngine, superuser: asyncpg.Connection
) -> None:
    now = utcnow()
    tenant = uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[
            make_event(tenant, 0, occurred_at=now - timedelta(days=400)),
            make_event(tenant, 1),
            make_event(tenant, 2, occurred_at=now - timedelta(days=400)),
            make_event(tenant, 3),
        ],
    )
    await service.apply_retention(engine=writer_engine, retention_days=365, now=now)
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).ok
    await superuser.execute(
        "UPDATE audit_retention_tombstones SET content_hash = repeat('a', 64) WHERE tenant_id = $1",
        tenant,
    )
    broken = (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).first_break
    assert broken is not None
    assert broken.sequence == 4
    await superuser.execute(
        "UPDATE audit_retention_checkpoints SET hash = repeat('b', 64) WHERE tenant_id = $1",
        tenant,
    )
    broken = (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).first_break
    assert broken is not None
    assert broken.sequence == 2
