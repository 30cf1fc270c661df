"""The service through HTTP and the broker: tenant isolation of exports, roles, CSV injection,
audited exports, verify, and exactly-once consumption of ``audit.v1``."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest
from audit_testkit import TestIssuer, make_event, read_topic, rewrite_tail, wait_for
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_audit import jobs, service
from tenantry_audit.app import build_app
from tenantry_audit.config import AuditSettings
from tenantry_common.events import TenantOffboarded, TenantProvisioned
from tenantry_common.ids import utcnow
from tenantry_common.messaging import build_broker, publish_event
from tenantry_common.testing.lifespan import serving
from tenantry_common.topics import AUDIT, TENANTS_LIFECYCLE

from conftest import new_audit_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def audit_settings(make_database, kafka_bootstrap) -> AuditSettings:
    """One database for this module's app (each test uses fresh tenants): the app's consumer
    group takes seconds to join, so the app is started once."""
    return await new_audit_settings(make_database, kafka_bootstrap)


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
async def app(audit_settings: AuditSettings, issuer: TestIssuer) -> AsyncIterator[FastAPI]:
    application = build_app(
        audit_settings, verifier=issuer.verifier(), group_prefix=f"t{uuid.uuid4().hex[:8]}."
    )
    async with serving(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://audit") as http:
        yield http


async def _count(engine: AsyncEngine, tenant: uuid.UUID, where: str = "true") -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(f"SELECT count(*) FROM audit_records WHERE tenant_id = :t AND {where}"),  # noqa: S608
                    {"t": tenant},
                )
            ).scalar_one()
        )


def _csv(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


async def test_a_tenant_admin_exports_only_its_own_records(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await service.append_records(
        engine=writer_engine,
        events=[make_event(a, i) for i in range(3)] + [make_event(b, i) for i in range(4)],
    )
    headers = issuer.headers(tenant_id=a, role="admin")

    response = await client.get("/v1/audit/export", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = _csv(response.text)
    assert len(rows) == 3
    assert {r["tenant_id"] for r in rows} == {str(a)}
    assert list(rows[0]) == [
        "log_id", "tenant_id", "timestamp", "event_type", "user_id", "resource_type",
        "resource_id", "action", "status", "error", "ip_address", "user_agent", "details",
        "source", "recorded_at", "sequence", "record_hash",
    ]  # fmt: skip
    assert json.loads(rows[0]["details"])["bytes"] == 1024

    lines = (await client.get("/v1/audit/export?format=jsonl", headers=headers)).text.splitlines()
    assert len(lines) == 3
    assert {json.loads(line)["tenant_id"] for line in lines} == {str(a)}

    # Nothing the caller sends can point the export at another tenant.
    sneaky = await client.get(
        "/v1/audit/export", params={"tenant_id": str(b)}, headers=headers | {"X-Tenant-Id": str(b)}
    )
    assert {r["tenant_id"] for r in _csv(sneaky.text)} == {str(a)}


async def test_a_tenant_token_on_the_operator_path_is_refused(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await service.append_records(engine=writer_engine, events=[make_event(b, 0)])
    headers = issuer.headers(tenant_id=a, role="admin")
    for path in (
        f"/v1/tenants/{b}/audit/export",
        f"/v1/tenants/{a}/audit/export",
        f"/v1/tenants/{b}/audit/verify",
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert response.json() == {"detail": "operator role required"}, "no records leak"


async def test_members_may_not_export_or_verify(
    client: httpx.AsyncClient, issuer: TestIssuer, audit_settings: AuditSettings
) -> None:
    a = uuid.uuid4()
    headers = issuer.headers(tenant_id=a, role="member")
    assert (await client.get("/v1/audit/export", headers=headers)).status_code == 403
    assert (await client.get("/v1/audit/verify", headers=headers)).status_code == 403
    # The refusal is itself on the record.
    denied = await read_topic(
        audit_settings.kafka_bootstrap_servers,
        AUDIT.name,
        lambda v: v["tenant_id"] == str(a) and v["audit_type"] == "access_denied",
        expect=2,
    )
    assert {d["action"] for d in denied} == {"export", "verify"}


async def test_requests_without_a_valid_token_are_refused(
    client: httpx.AsyncClient, issuer: TestIssuer
) -> None:
    assert (await client.get("/v1/audit/export")).status_code == 401
    other = TestIssuer()  # a key the service does not know
    forged = other.headers(tenant_id=uuid.uuid4(), role="operator")
    assert (await client.get("/v1/audit/export", headers=forged)).status_code == 401


async def test_an_operator_exports_any_tenant_through_the_operator_path(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await service.append_records(
        engine=writer_engine, events=[make_event(a, 0), make_event(b, 0), make_event(b, 1)]
    )
    headers = issuer.headers(tenant_id=uuid.UUID(int=0), role="operator")
    rows = _csv((await client.get(f"/v1/tenants/{b}/audit/export", headers=headers)).text)
    assert [r["tenant_id"] for r in rows] == [str(b), str(b)]


async def test_export_time_range_is_half_open_and_validated(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a = uuid.uuid4()
    now = utcnow().replace(microsecond=0)
    await service.append_records(
        engine=writer_engine,
        events=[make_event(a, i, occurred_at=now - timedelta(hours=i)) for i in range(5)],
    )
    headers = issuer.headers(tenant_id=a, role="admin")
    params = {
        "start": (now - timedelta(hours=3)).isoformat(),
        "end": (now - timedelta(hours=1)).isoformat(),
    }
    rows = _csv((await client.get("/v1/audit/export", params=params, headers=headers)).text)
    assert sorted(r["resource_id"] for r in rows) == ["doc-2", "doc-3"]
    swapped = {"start": params["end"], "end": params["start"]}
    assert (
        await client.get("/v1/audit/export", params=swapped, headers=headers)
    ).status_code == 400
    naive = {"start": "2025-01-01T00:00:00"}
    assert (await client.get("/v1/audit/export", params=naive, headers=headers)).status_code == 400
    bad = {"format": "xlsx"}
    assert (await client.get("/v1/audit/export", params=bad, headers=headers)).status_code == 422


async def test_csv_formula_injection_is_neutralised(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a = uuid.uuid4()
    payloads = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", "\x00x"]
    await service.append_records(
        engine=writer_engine,
        events=[
            make_event(a, i, actor=p, resource_id=p, user_agent=p, error=p, action="read")
            for i, p in enumerate(payloads)
        ],
    )
    body = (
        await client.get("/v1/audit/export", headers=issuer.headers(tenant_id=a, role="admin"))
    ).text
    rows = _csv(body)
    assert len(rows) == len(payloads)
    for row in rows:
        for column in ("user_id", "resource_id", "user_agent", "error"):
            # NUL cannot be stored in Postgres text: it was replaced by U+FFFD on the way in.
            if row[column].startswith("\ufffd"):
                continue
            assert row[column].startswith("'"), (column, row[column])
    assert sum(r["user_id"] == "\ufffdx" for r in rows) == 1
    assert {r["user_id"] for r in rows} >= {'\'=HYPERLINK("http://x")', "'@SUM(A1)", "'-2+3"}
    # JSON lines are data, not a spreadsheet: the values come out as stored.
    lines = (
        await client.get(
            "/v1/audit/export?format=jsonl", headers=issuer.headers(tenant_id=a, role="admin")
        )
    ).text.splitlines()
    assert {json.loads(line)["user_id"] for line in lines} >= {'=HYPERLINK("http://x")', "+1+1"}


async def test_every_export_is_itself_audited_in_the_tenants_chain(
    client: httpx.AsyncClient, writer_engine: AsyncEngine, issuer: TestIssuer
) -> None:
    a = uuid.uuid4()
    await service.append_records(engine=writer_engine, events=[make_event(a, 0)])
    response = await client.get(
        "/v1/audit/export?format=jsonl",
        headers=issuer.headers(tenant_id=a, role="admin") | {"User-Agent": "compliance-bot"},
    )
    assert response.status_code == 200
    # Published on audit.v1, consumed by the service and appended to A's own chain.
    await wait_for(lambda: _has_export(writer_engine, a))
    async with writer_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT actor, action, user_agent, details_json FROM audit_records "
                    "WHERE tenant_id = :t AND audit_type = 'export'"
                ),
                {"t": a},
            )
        ).one()
    assert (row.actor, row.action, row.user_agent) == ("user-1", "export", "compliance-bot")
    assert json.loads(row.details_json)["format"] == "jsonl"
    assert (await service.verify_chain(engine=writer_engine, tenant_id=a)).ok


async def _has_export(engine: AsyncEngine, tenant: uuid.UUID) -> bool:
    return await _count(engine, tenant, "audit_type = 'export'") == 1


async def test_verify_endpoint_reports_the_first_broken_link(
    client: httpx.AsyncClient,
    writer_engine: AsyncEngine,
    superuser: asyncpg.Connection,
    issuer: TestIssuer,
) -> None:
    a = uuid.uuid4()
    await service.append_records(engine=writer_engine, events=[make_event(a, i) for i in range(4)])
    headers = issuer.headers(tenant_id=a, role="admin")
    ok = (await client.get("/v1/audit/verify", headers=headers)).json()
    assert ok["ok"] is True
    assert ok["records_checked"] == 4
    assert ok["first_broken_link"] is None

    await superuser.execute("DELETE FROM audit_records WHERE tenant_id = $1 AND sequence = 2", a)
    broken = (await client.get("/v1/audit/verify", headers=headers)).json()
    assert broken["ok"] is False
    assert broken["first_broken_link"]["sequence"] == 2
    operator = issuer.headers(tenant_id=uuid.UUID(int=0), role="operator")
    via_operator = (await client.get(f"/v1/tenants/{a}/audit/verify", headers=operator)).json()
    assert via_operator["first_broken_link"] == broken["first_broken_link"]


async def test_verify_against_anchors_finds_a_tail_rewritten_with_its_head_row(
    app: FastAPI,
    client: httpx.AsyncClient,
    writer_engine: AsyncEngine,
    superuser: asyncpg.Connection,
    issuer: TestIssuer,
) -> None:
    a = uuid.uuid4()
    await service.append_records(engine=writer_engine, events=[make_event(a, i) for i in range(5)])
    publisher = jobs.AnchorPublisher(engine=writer_engine, broker=app.state.audit.broker)
    assert await publisher.publish() >= 1  # the head at 5 goes out before the rewrite
    await rewrite_tail(superuser, a, from_sequence=2)

    headers = issuer.headers(tenant_id=a, role="admin")
    plain = (await client.get("/v1/audit/verify", headers=headers)).json()
    assert (plain["ok"], plain["anchors_checked"]) == (True, None)
    anchored = await client.get("/v1/audit/verify?against_anchors=true", headers=headers)
    assert anchored.status_code == 200
    body = anchored.json()
    assert (body["ok"], body["anchors_checked"]) == (False, 1)
    assert body["first_broken_link"]["sequence"] == 5
    assert "anchored head" in body["first_broken_link"]["reason"]
    operator = issuer.headers(tenant_id=uuid.UUID(int=0), role="operator")
    via_operator = (
        await client.get(f"/v1/tenants/{a}/audit/verify?against_anchors=true", headers=operator)
    ).json()
    assert via_operator["first_broken_link"] == body["first_broken_link"]


async def test_redelivered_events_on_the_topic_are_stored_once(
    app: FastAPI, audit_settings: AuditSettings, writer_engine: AsyncEngine
) -> None:
    a = uuid.uuid4()
    events = [make_event(a, i) for i in range(5)]
    broker = build_broker(audit_settings, client_id="test-producer")
    async with broker:
        await broker.connect()
        for _ in range(3):
            for event in events:
                await publish_event(broker, AUDIT, event)
        await publish_event(broker, AUDIT, make_event(a, 99))

    async def all_arrived() -> bool:
        return await _count(writer_engine, a, "resource_id = 'doc-99'") == 1

    await wait_for(all_arrived)
    assert await _count(writer_engine, a) == 6
    report = await service.verify_chain(engine=writer_engine, tenant_id=a)
    assert report.ok
    assert report.head_sequence == 6


async def test_lifecycle_events_are_acknowledged_and_offboarding_keeps_records(
    app: FastAPI, audit_settings: AuditSettings, writer_engine: AsyncEngine
) -> None:
    from tenantry_common.events import TenantConfig, Tier

    a = uuid.uuid4()
    await service.append_records(engine=writer_engine, events=[make_event(a, 0)])
    config = TenantConfig(
        tenant_name="acme",
        tier=Tier.PRO,
        model="smollm2-135m",
        allowed_models=["smollm2-135m"],
        temperature=0.2,
        max_tokens_per_request=256,
        system_prompt_template="You help {tenant_name}.",
        rate_limit_per_minute=60,
        daily_token_budget=100_000,
        monthly_spend_budget_micros=1_000_000,
        cache_similarity_threshold=0.9,
    )
    provisioned = TenantProvisioned(
        tenant_id=a, tenant_name="acme", tier=Tier.PRO, config_version=1, config=config
    )
    offboarded = TenantOffboarded(tenant_id=a, tenant_name="acme", reason="contract ended")
    broker = build_broker(audit_settings, client_id="test-edge")
    async with broker:
        await broker.connect()
        await publish_event(broker, TENANTS_LIFECYCLE, provisioned)
        await publish_event(broker, TENANTS_LIFECYCLE, offboarded)
    acks = await read_topic(
        audit_settings.kafka_bootstrap_servers,
        TENANTS_LIFECYCLE.name,
        lambda v: v["tenant_id"] == str(a) and v["event_type"] == "TenantLifecycleAcknowledged",
        expect=2,
    )
    assert sorted((x["service"], x["action"], x["succeeded"]) for x in acks) == [
        ("audit", "offboarded", True),
        ("audit", "provisioned", True),
    ]
    assert "retention" in next(x for x in acks if x["action"] == "offboarded")["detail"]
    assert await _count(writer_engine, a) == 1, "offboarding keeps the records"


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert "tenantry_audit_records_appended_total" in (await client.get("/metrics")).text
