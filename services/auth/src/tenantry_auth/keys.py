"""The edge's Ed25519 signing keys: stored in Postgres (private half encrypted), published as a
JWKS, rotated with the old keys kept until the tokens they signed have expired."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt import PyJWK
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenantry_common.auth import API_AUDIENCE, EDGE_ISSUER, Role
from tenantry_common.db import transaction
from tenantry_common.ids import utcnow

from tenantry_auth import repository as repo
from tenantry_auth.models import SigningKey

ALGORITHM = "EdDSA"
#: Retired keys stay published this long after their last token could have expired.
RETIRED_KEY_GRACE_S = 120


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class KeyCipher:
    """AES-GCM over the private keys, with a key derived from the configured secret."""

    def __init__(self, secret: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tenantry-edge-keys")
        self._aead = AESGCM(hkdf.derive(secret.encode()))

    def encrypt(self, kid: str, raw: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, raw, kid.encode())

    def decrypt(self, kid: str, blob: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], kid.encode())


def new_signing_key(cipher: KeyCipher) -> SigningKey:
    """A fresh Ed25519 key as a table row (not yet stored)."""
    private = Ed25519PrivateKey.generate()
    kid = f"edge-{uuid.uuid4().hex[:16]}"
    public_raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    private_raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_raw), "kid": kid}
    jwk |= {"alg": ALGORITHM, "use": "sig"}
    return SigningKey(
        kid=kid,
        public_jwk=jwk,
        private_key_encrypted=cipher.encrypt(kid, private_raw),
        created_at=utcnow(),
    )


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    jwk: dict[str, Any]
    private: Ed25519PrivateKey
    created_at: datetime
    retired_at: datetime | None

    @cached_property
    def public(self) -> PyJWK:
        """The public half as PyJWT verifies with it (built once)."""
        return PyJWK(self.jwk)


class KeyRing:
    """The signing keys this replica knows; reloaded from Postgres periodically and on an
    unknown kid, so a rotation done by another replica (or the CLI) is picked up."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        cipher: KeyCipher,
        token_ttl_s: int,
        min_reload_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.cipher = cipher
        self.token_ttl_s = token_ttl_s
        self.min_reload_s = min_reload_s
        self._keys: dict[str, LoadedKey] = {}
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    def _publishable(self, key: LoadedKey, now: datetime) -> bool:
        if key.retired_at is None:
            return True
        grace = timedelta(seconds=self.token_ttl_s + RETIRED_KEY_GRACE_S)
        return key.retired_at + grace > now

    async def load(self, *, create_if_missing: bool = True) -> None:
        """Read the keys from Postgres (creating the first one if there is none)."""
        async with transaction(self.sessions) as session:
            rows = await repo.list_signing_keys(session=session)
            if not any(r.retired_at is None for r in rows) and create_if_missing:
                # Serialised by an advisory lock, so replicas starting together make one key.
                await repo.lock_signing_keys(session=session)
                rows = await repo.list_signing_keys(session=session)
                if not any(r.retired_at is None for r in rows):
                    row = new_signing_key(self.cipher)
                    session.add(row)
                    rows.append(row)
        now = utcnow()
        keys: dict[str, LoadedKey] = {}
        for row in rows:
            private = Ed25519PrivateKey.from_private_bytes(
                self.cipher.decrypt(row.kid, row.private_key_encrypted)
            )
            loaded = LoadedKey(
                row.kid, dict(row.public_jwk), private, row.created_at, row.retired_at
            )
            if self._publishable(loaded, now):
                keys[row.kid] = loaded
        self._keys = keys
        self._loaded_at = time.monotonic()

    def current(self) -> LoadedKey:
        """The newest active key (tokens are signed with it)."""
        active = [k for k in self._keys.values() if k.retired_at is None]
        if not active:
            raise RuntimeError("no active signing key loaded")
        return max(active, key=lambda k: k.created_at)

    def jwks(self) -> dict[str, Any]:
        """Every key whose tokens may still be valid, as a JWK Set."""
        now = utcnow()
        return {"keys": [k.jwk for k in self._keys.values() if self._publishable(k, now)]}

    async def key_for(self, kid: str) -> PyJWK | None:
        """The public key named ``kid`` (a ``KeySource`` for ``TokenVerifier``)."""
        key = self._keys.get(kid)
        if key is None:
            async with self._lock:
                if (
                    kid not in self._keys
                    and time.monotonic() - self._loaded_at >= self.min_reload_s
                ):
                    await self.load(create_if_missing=False)
            key = self._keys.get(kid)
        if key is None or not self._publishable(key, utcnow()):
            return None
        return key.public

    def issue(
        self,
        *,
        tenant_id: uuid.UUID,
        client_id: str,
        role: Role,
        ttl_s: int | None = None,
    ) -> tuple[str, int]:
        """A signed access token for a client, and its lifetime in seconds."""
        key = self.current()
        lifetime = ttl_s or self.token_ttl_s
        now = int(time.time())
        claims = {
            "iss": EDGE_ISSUER,
            "aud": API_AUDIENCE,
            "sub": client_id,
            "client_id": client_id,
            "tenant_id": str(tenant_id),
            "role": role.value,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, lifetime


async def rotate_signing_key(
    *, sessions: async_sessionmaker[AsyncSession], cipher: KeyCipher
) -> str:
    """Make a new signing key current; older ones are retired (still published until their
    tokens expire). Returns the new kid."""
    async with transaction(sessions) as session:
        await repo.lock_signing_keys(session=session)
        await repo.retire_signing_keys(session=session, at=utcnow())
        row = new_signing_key(cipher)
        session.add(row)
    return row.kid
