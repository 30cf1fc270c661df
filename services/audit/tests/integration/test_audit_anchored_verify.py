"""Verify against published anchors, with real Postgres and the broker: a superuser who rewrites
a whole chain tail (head row included), or cuts the tail off, passes the plain verify but not
the one against the heads published on ``audit.anchors.v1``; the CLI flag does the same."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from audit_testkit import make_event, rewrite_tail
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import jobs, service
from tenantry_audit.anchors import AnchorsUnavailable, anchors_for, read_anchors
from tenantry_audit.config import AuditSettings
from tenantry_common.messaging import build_broker
from test_audit_jobs import _cli

pytestmark = pytest.mark.integration


async def _anchored_chain(
    settings: AuditSettings, engine: AsyncEngine, tenant: uuid.UUID
) -> list[service.ChainHead]:
    """Six records with heads published at 4 and 6 (another tenant's at 1 alongside)."""
    other = uuid.uuid4()
    heads = []
    broker = build_broker(settings, client_id="test-anchor-publisher")
    async with broker:
        await broker.connect()
        publisher = jobs.AnchorPublisher(engine=engine, broker=broker)
        await service.append_records(
            engine=engine,
            events=[make_event(tenant, i) for i in range(4)] + [make_event(other, 0)],
        )
        assert await publisher.publish() >= 2
        heads.append(await service.chain_head(engine=engine, tenant_id=tenant))
        await service.append_records(engine=engine, events=[make_event(tenant, i) for i in (4, 5)])
        assert await publisher.publish() >= 1
        heads.append(await service.chain_head(engine=engine, tenant_id=tenant))
    return [h for h in heads if h is not None]


async def test_a_rewritten_tail_with_its_head_row_is_found_only_against_anchors(
    audit_settings: AuditSettings, writer_engine: AsyncEngine, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    heads = await _anchored_chain(audit_settings, writer_engine, tenant)
    assert [h.sequence for h in heads] == [4, 6]
    anchors = await anchors_for(settings=audit_settings, tenant_id=tenant)
    assert sorted((a.sequence, a.head_hash) for a in anchors) == [
        (h.sequence, h.hash) for h in heads
    ], "exactly this tenant's anchors, read back from the topic"
    intact = await service.verify_chain(engine=writer_engine, tenant_id=tenant, anchors=anchors)
    assert (intact.ok, intact.anchors_checked) == (True, 2)

    await rewrite_tail(superuser, tenant, from_sequence=3)

    plain = await service.verify_chain(engine=writer_engine, tenant_id=tenant)
    assert plain.ok, "consistent inside the database: the plain walk cannot tell"
    assert plain.anchors_checked is None
    report = await service.verify_chain(
        engine=writer_engine,
        tenant_id=tenant,
        anchors=await anchors_for(settings=audit_settings, tenant_id=tenant),
    )
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.sequence == 4, "the first anchored head after the rewrite"
    assert "anchored head" in report.first_break.reason

    code, out = await _cli(audit_settings, "verify", "--tenant", str(tenant))
    assert (code, out["ok"]) == (0, True)
    code, out = await _cli(audit_settings, "verify", "--tenant", str(tenant), "--against-anchors")
    assert (code, out["ok"], out["first_broken_link"]["sequence"]) == (1, False, 4)


async def test_a_cut_off_tail_with_a_moved_head_is_found_against_anchors(
    audit_settings: AuditSettings, writer_engine: AsyncEngine, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    heads = await _anchored_chain(audit_settings, writer_engine, tenant)
    four = heads[0]
    async with superuser.transaction():
        await superuser.execute(
            "DELETE FROM audit_records WHERE tenant_id = $1 AND sequence > 4", tenant
        )
        await superuser.execute(
            "UPDATE audit_chain_heads SET sequence = 4, hash = $2 WHERE tenant_id = $1",
            tenant,
            four.hash,
        )
    assert (await service.verify_chain(engine=writer_engine, tenant_id=tenant)).ok
    report = await service.verify_chain(
        engine=writer_engine,
        tenant_id=tenant,
        anchors=await anchors_for(settings=audit_settings, tenant_id=tenant),
    )
    assert report.first_break is not None
    assert report.first_break.sequence == 5
    assert "anchored at record 6" in report.first_break.reason


async def test_anchors_that_cannot_be_read_are_an_error_not_a_pass(
    audit_settings: AuditSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AnchorsUnavailable):
        await read_anchors(
            bootstrap_servers=audit_settings.kafka_bootstrap_servers,
            topic=f"no.such.topic.{uuid.uuid4().hex[:6]}",
            tenant_id=uuid.uuid4(),
            timeout_s=10,
        )
    monkeypatch.setenv("TENANTRY_ANCHORS_TOPIC", "no.such.topic")
    code, out = await _cli(
        audit_settings,
        "verify",
        "--tenant",
        str(uuid.uuid4()),
        "--against-anchors",
    )
    assert (code, out["ok"]) == (2, None)
