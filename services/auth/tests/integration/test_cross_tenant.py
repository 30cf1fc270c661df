"""Tenant A's token on tenant B's resources: always 403/404, never B's data, never a change."""

from __future__ import annotations

import uuid

import pytest
from auth_support import bearer
from tenantry_common.events import AuditRecorded, AuditType

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pair(onboard, client):
    a = await onboard(name="tenant-a")
    b = await onboard(name="tenant-b")
    r = await client.post(
        "/v1/documents",
        json={"title": "B secret", "text": "only for B"},
        headers=bearer(b.admin_token),
    )
    assert r.status_code == 202
    b_doc = r.json()["document_id"]
    b_clients = (await client.get("/v1/clients", headers=bearer(b.admin_token))).json()
    return a, b, b_doc, [c["client_id"] for c in b_clients]


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"),
    [
        ("GET", "/v1/tenants/{b}", None, {403}),
        ("DELETE", "/v1/tenants/{b}", None, {403}),
        ("PATCH", "/v1/tenants/{b}", {"tier": "enterprise", "name": "taken"}, {403}),
        ("DELETE", "/v1/tenants/{b}/clients/{b_client}", None, {403}),
        ("DELETE", "/v1/clients/{b_client}", None, {404}),
        ("DELETE", "/v1/documents/{b_doc}", None, {404}),
        ("GET", "/v1/documents/{b_doc}", None, {404}),
        ("GET", "/v1/tenants/{b}/usage", None, {403}),
        ("GET", "/v1/tenants/{b}/audit/export", None, {403}),
        ("POST", "/v1/chat", {"question": "q", "tenant_id": "{b}"}, {422}),
        ("POST", "/v1/documents", {"title": "t", "text": "x", "tenant_id": "{b}"}, {422}),
        ("PUT", "/v1/config", {"tenant_id": "{b}", "temperature": 1.0}, {422}),
        ("POST", "/v1/clients", {"role": "admin", "tenant_id": "{b}"}, {422}),
    ],
)
async def test_tenant_a_cannot_touch_tenant_b(
    client, pair, topics_seen, method, path, body, allowed
) -> None:
    a, b, b_doc, b_clients = pair
    values = {"b": str(b.tenant_id), "b_doc": b_doc, "b_client": b_clients[0]}
    url = path.format(**values)
    payload = {
        k: (v.format(**values) if isinstance(v, str) else v) for k, v in (body or {}).items()
    } or None
    r = await client.request(
        method, url, json=payload, headers=bearer(a.admin_token) | {"X-Tenant-Id": str(b.tenant_id)}
    )
    assert r.status_code in allowed, (method, url, r.status_code, r.text)
    assert "only for B" not in r.text
    assert "B secret" not in r.text
    # B is untouched.
    docs = (await client.get("/v1/documents", headers=bearer(b.admin_token))).json()
    assert b_doc in [d["document_id"] for d in docs["documents"]]
    assert (await client.get(f"/v1/tenants/{b.tenant_id}", headers=bearer(b.admin_token))).json()[
        "status"
    ] == "active"
    assert (await client.get("/v1/config", headers=bearer(b.admin_token))).json()["version"] == 1


async def test_a_sees_and_restores_only_its_own_config_versions(client, onboard) -> None:
    """Version numbers are per tenant, so B's version 2 has a number A could ask for."""
    a, b = await onboard(name="versions-a"), await onboard(name="versions-b")
    r = await client.put(
        "/v1/config", json={"custom_instructions": "B canary"}, headers=bearer(b.admin_token)
    )
    assert r.json()["version"] == 2
    admin_a = bearer(a.admin_token) | {"X-Tenant-Id": str(b.tenant_id)}
    listed = await client.get(
        "/v1/config/versions", params={"tenant_id": str(b.tenant_id)}, headers=admin_a
    )
    assert [v["version"] for v in listed.json()["versions"]] == [1]
    assert (await client.get("/v1/config/versions/2", headers=admin_a)).status_code == 404
    restore = await client.post("/v1/config/versions/2/restore", headers=admin_a)
    assert restore.status_code == 404
    for response in (listed, restore):
        assert "B canary" not in response.text
        assert str(b.tenant_id) not in response.text
    assert (await client.get("/v1/config", headers=bearer(a.admin_token))).json()["version"] == 1


async def test_a_sees_only_its_own_documents_config_and_clients(client, pair) -> None:
    a, _b, b_doc, b_clients = pair
    docs = (await client.get("/v1/documents", headers=bearer(a.admin_token))).json()
    assert b_doc not in [d["document_id"] for d in docs["documents"]]
    config = (await client.get("/v1/config", headers=bearer(a.admin_token))).json()
    assert config["config"]["tenant_name"] == "tenant-a"
    clients = (await client.get("/v1/clients", headers=bearer(a.admin_token))).json()
    assert not set(b_clients) & {c["client_id"] for c in clients}
    assert all(c["client_id"].startswith(str(a.tenant_id)) for c in clients)


async def test_header_naming_another_tenant_is_ignored_by_chat(client, pair, responder) -> None:
    a, b, _, _ = pair
    r = await client.post(
        "/v1/chat",
        json={"question": "mine"},
        headers=bearer(a.member_token) | {"X-Tenant-Id": str(b.tenant_id)},
    )
    assert r.status_code == 200
    request_id = uuid.UUID(r.json()["request_id"])
    [request] = [q for q in responder.requests if q.request_id == request_id]
    assert request.tenant_id == a.tenant_id


async def test_cross_tenant_refusal_is_audited_under_the_callers_tenant(
    client, pair, topics_seen
) -> None:
    a, b, _, _ = pair
    agent = f"cross-{uuid.uuid4().hex[:6]}"
    r = await client.get(
        f"/v1/tenants/{b.tenant_id}", headers=bearer(a.admin_token) | {"User-Agent": agent}
    )
    assert r.status_code == 403
    [event] = await topics_seen.wait_for(AuditRecorded, user_agent=agent)
    assert event.audit_type is AuditType.ACCESS_DENIED
    assert event.tenant_id == a.tenant_id


async def test_tenant_admin_cannot_use_operator_endpoints(client, pair) -> None:
    a, _, _, _ = pair
    assert (await client.get("/v1/tenants", headers=bearer(a.admin_token))).status_code == 403
    r = await client.post(
        "/v1/tenants",
        json={"name": "x", "tier": "free", "admin_contact": "a@b.c"},
        headers=bearer(a.admin_token),
    )
    assert r.status_code == 403
