"""Test helpers for audit's integration tests: event factories and an Ed25519 token issuer."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tenantry_common.auth import API_AUDIENCE, EDGE_ISSUER, StaticKeys, TokenVerifier
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType


class TestIssuer:
    """Signs tokens the way the edge does (EdDSA, kid, iss, aud, tenant_id, role)."""

    __test__ = False

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = f"test-{uuid.uuid4().hex[:8]}"
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        self.jwks = {
            "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA"}]
        }

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(issuers={EDGE_ISSUER: StaticKeys(self.jwks)})

    def token(self, *, tenant_id: uuid.UUID, role: str, sub: str = "user-1", **extra: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": EDGE_ISSUER,
            "aud": API_AUDIENCE,
            "sub": sub,
            "tenant_id": str(tenant_id),
            "role": role,
            "iat": now,
            "exp": now + 600,
            **extra,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})

    def headers(self, *, tenant_id: uuid.UUID, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant_id=tenant_id, role=role)}"}


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
