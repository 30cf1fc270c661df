"""The chain against real Postgres: exactly-once appends, the writer's limits, tamper detection."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import pytest
from audit_testkit import make_event
from sqlalchemy import event, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import service
from tenantry_audit.chain import GENESIS_HASH

pytestmark = pytest.mark.integration


async def _append(engine: AsyncEngine, tenant: uuid.UUID, count: int, start: int = 0) -> None:
    await service.append_records(
        engine=engine, events=[make_event(tenant, start + i) for i in range(count)]
    )


async def test_duplicates_are_stored_once_and_sequences_stay_contiguous(
    writer_engine: AsyncEngine,
) -> None:
    tenant = uuid.uuid4()
    events = [make_event(tenant, i) for i in range(5)]
    first = await service.append_records(engine=writer_engine, events=events)
    # Redelivered one by one, and a batch that repeats an event within itself.
    again = [await service.append_records(engine=writer_engine, events=[e]) for e in events]
    mixed = await service.append_records(
        engine=writer_engine, events=[events[0], make_event(tenant, 9), events[0]]
    )
    assert (first.appended, first.duplicates) == (5, 0)
    assert all((r.appended, r.duplicates) == (0, 1) for r in again)
    assert (mixed.appended, mixed.duplicates) == (1, 2)
    async with writer_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT sequence, event_id FROM audit_records WHERE tenant_id = :t ORDER BY 1"
                ),
                {"t": tenant},
            )
        ).all()
    assert [r.sequence for r in rows] == [1, 2, 3, 4, 5, 6]
    assert len({r.event_id for r in rows}) == 6
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert report.ok
    assert report.checked == 6
    assert report.head_sequence == 6


async def test_tenants_have_separate_chains(writer_engine: AsyncEngine) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await service.append_records(
        engine=writer_engine, events=[make_event(a, 0), make_event(b, 0), make_event(a, 1)]
    )
    report_a = await service.verify_chain(engine=writer_engine, tenant_id=a)
    report_b = await service.verify_chain(engine=writer_engine, tenant_id=b)
    assert (report_a.ok, report_a.head_sequence) == (True, 2)
    assert (report_b.ok, report_b.head_sequence) == (True, 1)
    empty = await service.verify_chain(engine=writer_engine, tenant_id=uuid.uuid4())
    assert empty.ok
    assert empty.checked == 0
    assert empty.head_sequence is None


async def test_a_batch_over_many_tenants_costs_four_statements_not_four_per_tenant(
    writer_engine: AsyncEngine,
) -> None:
    tenants = [uuid.uuid4() for _ in range(20)]
    await service.append_records(engine=writer_engine, events=[make_event(t) for t in tenants])
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(writer_engine.sync_engine, "before_cursor_execute", count)
    try:
        result = await service.append_records(
            engine=writer_engine, events=[make_event(t, n) for n in (1, 2) for t in tenants]
        )
    finally:
        event.remove(writer_engine.sync_engine, "before_cursor_execute", count)
    assert (result.appended, result.duplicates) == (40, 0)
    # Lock the heads, find stored events, insert the records, advance the heads.
    assert len(statements) == 4, statements
    for tenant in tenants:
        report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
        assert (report.ok, report.head_sequence) == (True, 3)


async def test_concurrent_batches_over_shared_tenants_chain_every_event_once(
    writer_engine: AsyncEngine,
) -> None:
    """Batches lock their heads in one order, so overlapping ones wait, never deadlock; tenants
    new to the log get their heads created on the way."""
    tenants = [uuid.uuid4() for _ in range(30)]
    for tenant in tenants[:10]:
        await _append(writer_engine, tenant, 2)
    batches = []
    for b in range(6):
        order = tenants[:]
        random.Random(b).shuffle(order)
        batches.append([make_event(t, 100 * b + i) for i, t in enumerate(order)])
    async with asyncio.timeout(60):
        results = await asyncio.gather(
            *(service.append_records(engine=writer_engine, events=batch) for batch in batches)
        )
    assert sum(r.appended for r in results) == 6 * 30
    for i, tenant in enumerate(tenants):
        report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
        assert (report.ok, report.head_sequence) == (True, 6 + (2 if i < 10 else 0))


async def _until_a_session_waits_on_a_lock(engine: AsyncEngine) -> None:
    for _ in range(100):
        # A transaction of its own each time: pg_stat_activity is a snapshot per transaction.
        async with engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never waited on the uncommitted head")


async def test_a_batch_creating_a_head_holds_no_other_head_meanwhile(
    writer_engine: AsyncEngine,
) -> None:
    """The interleaving that deadlocked in CI (2026-12-06): a batch locked a tenant's existing
    head, then waited to create a new tenant's head that another writer had inserted and not
    committed, and that writer went on to lock the first head. Now the batch creates heads in
    a transaction of its own, holding no head, so the other writer gets the head at once."""
    new, existing = uuid.uuid4(), uuid.uuid4()
    await _append(writer_engine, existing, 1)
    async with writer_engine.connect() as other:
        await other.execute(
            text("INSERT INTO audit_chain_heads (tenant_id, sequence, hash) VALUES (:t, 0, :g)"),
            {"t": new, "g": GENESIS_HASH},
        )
        batch = asyncio.create_task(
            service.append_records(
                engine=writer_engine, events=[make_event(new, 0), make_event(existing, 1)]
            )
        )
        await _until_a_session_waits_on_a_lock(writer_engine)
        await other.execute(text("SET LOCAL lock_timeout = '5s'"))
        await other.execute(
            text("SELECT 1 FROM audit_chain_heads WHERE tenant_id = :t FOR UPDATE"),
            {"t": existing},
        )
        await other.commit()
    result = await asyncio.wait_for(batch, 10)
    assert (result.appended, result.duplicates) == (2, 0)
    for tenant, head in ((new, 1), (existing, 2)):
        report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
        assert (report.ok, report.head_sequence) == (True, head)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET action = 'forged'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "DELETE FROM audit_retention_checkpoints",
        "UPDATE audit_policy SET min_retention_days = 1",
    ],
)
async def test_the_service_role_cannot_update_or_delete_records(
    writer_engine: AsyncEngine, statement: str
) -> None:
    tenant = uuid.uuid4()
    await _append(writer_engine, tenant, 2)
    with pytest.raises(ProgrammingError) as caught:
        async with writer_engine.begin() as conn:
            await conn.execute(text(statement))
    assert isinstance(caught.value.orig.__cause__, asyncpg.InsufficientPrivilegeError)
    assert "permission denied" in str(caught.value)
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).checked == 2


async def test_the_service_role_cannot_call_retention_with_a_young_cutoff(
    writer_engine: AsyncEngine,
) -> None:
    tenant = uuid.uuid4()
    await _append(writer_engine, tenant, 3)
    with pytest.raises(Exception, match="younger than the floor of 365 days"):
        async with writer_engine.begin() as conn:
            await conn.execute(
                text("SELECT * FROM audit_apply_retention(:t, now() + interval '1 day')"),
                {"t": tenant},
            )
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).checked == 3


# ----------------------------------------------------------------------------- tampering


async def _tampered(
    writer_engine: AsyncEngine, superuser: asyncpg.Connection, *statements: str
) -> service.VerifyReport:
    tenant = uuid.uuid4()
    await _append(writer_engine, tenant, 6)
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).ok
    async with superuser.transaction():
        for statement in statements:
            await superuser.execute(statement, tenant)
    return await service.verify_chain(engine=writer_engine, tenant_id=tenant)


async def test_editing_a_record_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        "UPDATE audit_records SET actor = 'someone-else' WHERE tenant_id = $1 AND sequence = 3",
    )
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.sequence == 3
    assert "content does not match" in report.first_break.reason


async def test_editing_details_json_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        """UPDATE audit_records SET details_json = '{"n":4}'
           WHERE tenant_id = $1 AND sequence = 4""",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 4


async def test_editing_a_record_and_rehashing_it_breaks_the_next_link(
    writer_engine, superuser
) -> None:
    tenant = uuid.uuid4()
    await _append(writer_engine, tenant, 5)
    async with writer_engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text("SELECT * FROM audit_records WHERE tenant_id = :t AND sequence = 2"),
                    {"t": tenant},
                )
            )
            .mappings()
            .one()
        )
    # A careful forger recomputes the edited record's own hashes...
    from tenantry_audit.chain import RecordContent, link_hash

    forged = RecordContent.from_row({**row, "action": "nothing-to-see"})
    content_hash = forged.content_hash()
    await superuser.execute(
        "UPDATE audit_records SET action = $2, content_hash = $3, hash = $4 "
        "WHERE tenant_id = $1 AND sequence = 2",
        tenant,
        "nothing-to-see",
        content_hash,
        link_hash(row["prev_hash"], 2, content_hash),
    )
    report = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    # ...and the next record's link gives it away.
    assert report.first_break is not None
    assert report.first_break.sequence == 3
    assert "prev_hash" in report.first_break.reason


async def test_deleting_a_record_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        "DELETE FROM audit_records WHERE tenant_id = $1 AND sequence = 4",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 4
    assert "missing" in report.first_break.reason


async def test_deleting_the_last_record_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        "DELETE FROM audit_records WHERE tenant_id = $1 AND sequence = 6",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 6
    assert "missing" in report.first_break.reason


async def test_deleting_the_first_record_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        "DELETE FROM audit_records WHERE tenant_id = $1 AND sequence = 1",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 1


async def test_reordering_records_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        # Swap positions 2 and 5 (through a free number: the primary key holds meanwhile).
        "UPDATE audit_records SET sequence = 1000 WHERE tenant_id = $1 AND sequence = 2",
        "UPDATE audit_records SET sequence = 2 WHERE tenant_id = $1 AND sequence = 5",
        "UPDATE audit_records SET sequence = 5 WHERE tenant_id = $1 AND sequence = 1000",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 2


async def test_reordering_timestamps_is_detected(writer_engine, superuser) -> None:
    report = await _tampered(
        writer_engine,
        superuser,
        "UPDATE audit_records SET occurred_at = occurred_at - interval '1 hour' "
        "WHERE tenant_id = $1 AND sequence = 5",
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 5


async def test_moving_a_record_to_another_tenant_is_detected(writer_engine, superuser) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    await _append(writer_engine, tenant, 3)
    await _append(writer_engine, other, 3)
    await superuser.execute(
        "UPDATE audit_records SET tenant_id = $2, sequence = 4 "
        "WHERE tenant_id = $1 AND sequence = 3",
        tenant,
        other,
    )
    await superuser.execute("UPDATE audit_chain_heads SET sequence = 4 WHERE tenant_id = $1", other)
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).first_break
    broken = (await service.verify_chain(engine=writer_engine, tenant_id=other)).first_break
    assert broken is not None
    assert broken.sequence == 4


async def test_the_first_record_links_to_genesis(writer_engine) -> None:
    tenant = uuid.uuid4()
    await _append(writer_engine, tenant, 1)
    async with writer_engine.connect() as conn:
        prev = (
            await conn.execute(
                text("SELECT prev_hash FROM audit_records WHERE tenant_id = :t"), {"t": tenant}
            )
        ).scalar_one()
    assert prev == GENESIS_HASH
