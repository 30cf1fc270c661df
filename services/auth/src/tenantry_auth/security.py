"""Client credentials: ids that name their tenant, random secrets, argon2 hashes."""

from __future__ import annotations

import asyncio
import secrets
import uuid

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from tenantry_common.ids import PLATFORM_TENANT_ID

#: Verified against when a client id is unknown, so timing does not reveal which ids exist.
_DUMMY_SECRET = "tenantry-dummy-secret"  # noqa: S105 (not a credential)


def new_client_id(tenant_id: uuid.UUID) -> str:
    """``<tenant uuid>.<random>``: the tenant is part of the id, so lookups are tenant-scoped."""
    return f"{tenant_id}.{secrets.token_hex(8)}"


def new_client_secret() -> str:
    """A random secret with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def tenant_of_client(client_id: str) -> uuid.UUID:
    """The tenant a client id belongs to; ids without a tenant prefix are platform clients."""
    prefix, dot, _ = client_id.partition(".")
    if dot:
        try:
            return uuid.UUID(prefix)
        except ValueError:
            pass
    return PLATFORM_TENANT_ID


class SecretHasher:
    """argon2id; secrets are random (not passwords), so a moderate cost is enough."""

    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._dummy = self._hasher.hash(_DUMMY_SECRET)

    async def hash(self, secret: str) -> str:
        """The stored form of a secret (computed off the event loop)."""
        return await asyncio.to_thread(self._hasher.hash, secret)

    async def verify(self, stored: str | None, secret: str) -> bool:
        """Whether ``secret`` matches ``stored``; spends the same time when nothing is stored."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored or self._dummy, secret) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)
