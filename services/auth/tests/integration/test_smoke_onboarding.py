"""Onboarding through the API: activation by the services' acks, rollback on a failed ack or
a timeout, and the lifecycle events published on the way."""

from __future__ import annotations

import uuid

import pytest
from auth_support import SERVICES, ack_all, bearer, get_token, wait_status
from tenantry_common.events import (
    AuditRecorded,
    AuditType,
    LifecycleAction,
    TenantConfigChanged,
    TenantOffboarded,
    TenantProvisioned,
)

pytestmark = pytest.mark.integration


async def _create(client, operator_token, tier="free"):
    r = await client.post(
        "/v1/tenants",
        json={"name": "Acme", "tier": tier, "admin_contact": "ops@acme.test"},
        headers=bearer(operator_token),
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_tenant_becomes_active_only_after_every_service_acknowledged(
    client, operator_token, producer, topics_seen
) -> None:
    created = await _create(client, operator_token)
    tenant_id = uuid.UUID(created["tenant_id"])
    assert created["status"] == "provisioning"
    provisioned = await topics_seen.wait_for(TenantProvisioned, tenant_id=tenant_id)
    assert provisioned[0].config.daily_token_budget == 50_000
    changed = await topics_seen.wait_for(TenantConfigChanged, tenant_id=tenant_id)
    assert changed[0].version == 1
    # Credentials of a provisioning tenant are refused.
    r = await client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )
    assert r.status_code == 401
    await ack_all(producer, tenant_id, LifecycleAction.PROVISIONED, services=SERVICES[:3])
    body = await wait_status(client, operator_token, tenant_id, "provisioning")
    assert "audit" in body["status_detail"]
    await ack_all(producer, tenant_id, LifecycleAction.PROVISIONED, services=SERVICES[3:])
    await wait_status(client, operator_token, tenant_id, "active")
    token = await get_token(client, created["client_id"], created["client_secret"])
    r = await client.get("/v1/config", headers=bearer(token))
    assert r.status_code == 200
    assert r.json()["config"]["tenant_name"] == "Acme"


async def test_failed_ack_rolls_onboarding_back_and_asks_for_cleanup(
    client, operator_token, producer, topics_seen
) -> None:
    created = await _create(client, operator_token, tier="pro")
    tenant_id = uuid.UUID(created["tenant_id"])
    await ack_all(producer, tenant_id, LifecycleAction.PROVISIONED, services=["retrieval"])
    await ack_all(
        producer, tenant_id, LifecycleAction.PROVISIONED, services=["metering"], succeeded=False
    )
    body = await wait_status(client, operator_token, tenant_id, "failed")
    assert "metering" in body["status_detail"]
    cleanup = await topics_seen.wait_for(TenantOffboarded, tenant_id=tenant_id)
    assert "onboarding failed" in cleanup[0].reason
    # Late successes do not resurrect it, and its credentials stay refused.
    await ack_all(producer, tenant_id, LifecycleAction.PROVISIONED)
    await wait_status(client, operator_token, tenant_id, "failed")
    r = await client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )
    assert r.status_code == 401
    audits = await topics_seen.wait_for(
        AuditRecorded, tenant_id=tenant_id, audit_type=AuditType.LIFECYCLE
    )
    assert any(a.status == "failure" for a in audits)


async def test_onboarding_that_times_out_is_rolled_back(
    client, operator_token, topics_seen
) -> None:
    created = await _create(client, operator_token)
    tenant_id = uuid.UUID(created["tenant_id"])
    body = await wait_status(client, operator_token, tenant_id, "failed", timeout=60)
    assert "timed out" in body["status_detail"]
    await topics_seen.wait_for(TenantOffboarded, tenant_id=tenant_id)
