"""Tokens: issuance, JWKS, rotation, and the refusal matrix (every case 401 and audited)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from auth_support import bearer, get_token
from cryptography.hazmat.primitives import serialization
from tenantry_auth.keys import rotate_signing_key
from tenantry_common.auth import API_AUDIENCE, EDGE_ISSUER
from tenantry_common.events import AuditRecorded, AuditType
from tenantry_common.ids import PLATFORM_TENANT_ID

pytestmark = pytest.mark.integration


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(tenant: uuid.UUID, client_id: str, **over):
    now = int(time.time())
    claims = {
        "iss": EDGE_ISSUER,
        "aud": API_AUDIENCE,
        "sub": client_id,
        "client_id": client_id,
        "tenant_id": str(tenant),
        "role": "admin",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 300,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
async def tenant(onboard):
    return await onboard()


def _bad_tokens(edge_app, tenant) -> dict[str, str]:
    key = edge_app.state.edge.keys.current()
    kid = key.kid
    good = _claims(tenant.tenant_id, tenant.admin_client_id)

    def sign(claims, headers=None):
        return jwt.encode(
            claims, key.private, algorithm="EdDSA", headers={"kid": kid} | (headers or {})
        )

    def unsigned(header, claims, sig=b""):
        return (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(sig)}"
        )

    valid = sign(good)
    head, payload, sig = valid.split(".")
    altered_sig = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    hs_input = f"{hs_header}.{payload}".encode()
    hs_sig = _b64(hmac.new(public_pem, hs_input, hashlib.sha256).digest())
    now = int(time.time())
    return {
        "alg_none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, good),
        "hs256_with_public_key": f"{hs_header}.{payload}.{hs_sig}",
        "stripped_signature": f"{head}.{payload}.",
        "altered_signature": f"{head}.{payload}.{altered_sig}",
        "altered_payload": f"{head}.{_b64(json.dumps(good | {'role': 'operator'}).encode())}.{sig}",
        "expired": sign(
            _claims(tenant.tenant_id, tenant.admin_client_id, iat=now - 4000, exp=now - 3000)
        ),
        "not_yet_valid": sign(
            _claims(tenant.tenant_id, tenant.admin_client_id, nbf=now + 3000, exp=now + 4000)
        ),
        "wrong_aud": sign(_claims(tenant.tenant_id, tenant.admin_client_id, aud="someone-else")),
        "missing_aud": sign(_claims(tenant.tenant_id, tenant.admin_client_id, aud=None)),
        "wrong_iss": sign(
            _claims(tenant.tenant_id, tenant.admin_client_id, iss="https://evil.test")
        ),
        "missing_tenant_id": sign(
            _claims(tenant.tenant_id, tenant.admin_client_id, tenant_id=None)
        ),
        "missing_sub": sign(_claims(tenant.tenant_id, tenant.admin_client_id, sub=None)),
        "unknown_kid": sign(good, {"kid": "edge-not-a-key"}),
        "jku_header_ignored": sign(
            good, {"kid": "edge-not-a-key", "jku": "https://evil.test/jwks.json"}
        ),
        "garbage": "this-is-not-a-jwt",
        "garbage_three_parts": "a.b.c",
    }


async def test_valid_token_is_accepted(client, tenant) -> None:
    r = await client.get("/v1/config", headers=bearer(tenant.admin_token))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "case",
    [
        "alg_none",
        "hs256_with_public_key",
        "stripped_signature",
        "altered_signature",
        "altered_payload",
        "expired",
        "not_yet_valid",
        "wrong_aud",
        "missing_aud",
        "wrong_iss",
        "missing_tenant_id",
        "missing_sub",
        "unknown_kid",
        "jku_header_ignored",
        "garbage",
        "garbage_three_parts",
    ],
)
async def test_bad_token_is_refused_401_and_audited_as_access_denied(
    case, client, edge_app, tenant, topics_seen
) -> None:
    token = _bad_tokens(edge_app, tenant)[case]
    agent = f"matrix-{case}-{uuid.uuid4().hex[:8]}"
    r = await client.get("/v1/config", headers=bearer(token) | {"User-Agent": agent})
    assert r.status_code == 401, (case, r.text)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    [event] = await topics_seen.wait_for(AuditRecorded, user_agent=agent)
    assert event.audit_type is AuditType.ACCESS_DENIED
    assert event.tenant_id == PLATFORM_TENANT_ID  # nothing verified, so no tenant is trusted
    assert event.ip_address == "203.0.113.7"
    assert token not in event.model_dump_json()


async def test_missing_bearer_is_refused_and_audited(client, topics_seen) -> None:
    agent = f"no-token-{uuid.uuid4().hex[:8]}"
    r = await client.get("/v1/config", headers={"User-Agent": agent})
    assert r.status_code == 401
    await topics_seen.wait_for(AuditRecorded, user_agent=agent, audit_type=AuditType.ACCESS_DENIED)


async def test_wrong_client_secret_gets_invalid_client_and_is_audited(
    client, tenant, topics_seen
) -> None:
    agent = f"bad-secret-{uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/v1/oauth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": tenant.admin_client_id,
            "client_secret": "nope",
        },
        headers={"User-Agent": agent},
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    [event] = await topics_seen.wait_for(AuditRecorded, user_agent=agent)
    assert "nope" not in event.model_dump_json()


async def test_token_endpoint_refuses_other_grants_and_bad_bodies(client, tenant) -> None:
    r = await client.post(
        "/v1/oauth/token", data={"grant_type": "password", "client_id": "x", "client_secret": "y"}
    )
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")
    r = await client.post(
        "/v1/oauth/token", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post("/v1/oauth/token", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400


async def test_issued_token_carries_the_required_claims(client, tenant) -> None:
    claims = jwt.decode(tenant.admin_token, options={"verify_signature": False})
    assert claims["iss"] == EDGE_ISSUER
    assert claims["aud"] == API_AUDIENCE
    assert claims["tenant_id"] == str(tenant.tenant_id)
    assert claims["sub"] == claims["client_id"] == tenant.admin_client_id
    assert claims["role"] == "admin"
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert jwt.get_unverified_header(tenant.admin_token)["alg"] == "EdDSA"


async def test_rotation_keeps_old_tokens_valid_and_publishes_both_keys(
    client, edge_app, tenant
) -> None:
    edge = edge_app.state.edge
    old_kid = jwt.get_unverified_header(tenant.admin_token)["kid"]
    new_kid = await rotate_signing_key(sessions=edge.sessions, cipher=edge.keys.cipher)
    await edge.keys.load()
    jwks = (await client.get("/.well-known/jwks.json")).json()
    kids = {k["kid"] for k in jwks["keys"]}
    assert {old_kid, new_kid} <= kids
    assert all("d" not in k for k in jwks["keys"])  # never a private part
    assert (await client.get("/v1/config", headers=bearer(tenant.admin_token))).status_code == 200
    fresh = await get_token(client, tenant.admin_client_id, tenant.admin_secret)
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    assert (await client.get("/v1/config", headers=bearer(fresh))).status_code == 200
