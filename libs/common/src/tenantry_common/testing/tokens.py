"""A test issuer that signs tokens the way the edge does, for services that verify them."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tenantry_common.auth import API_AUDIENCE, EDGE_ISSUER, StaticKeys, TokenVerifier


class TestIssuer:
    """Signs EdDSA tokens with a kid, iss, aud, sub, tenant_id and role, as the edge does."""

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
