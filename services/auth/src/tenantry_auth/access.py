"""Whether a verified token may still be used: its tenant is active and its client is not
revoked. Checked on every request, on every replica, with no cache window.

Redis holds the fast answer (``tenant-status`` and ``revoked-clients`` per tenant). Changes
that *take away* access write Redis before their Postgres transaction commits (and abort it if
Redis cannot be written), so Redis never says "allowed" after Postgres says "refused". Changes
that *grant* access (activation) commit Postgres first. When Redis has no answer, or is down,
Postgres decides.

The same hash carries ``config_version``, the tenant's newest committed configuration version
(written after each commit, never lowered), so the one HMGET that checks access also tells the
configuration cache (``configs.ConfigCache``) whether the config it holds is still current.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenantry_common.tenancy import tenant_key

from tenantry_auth import repository as repo
from tenantry_auth.models import TenantStatus

log = logging.getLogger("tenantry.auth.access")

_REFUSED_STATUSES = {
    TenantStatus.OFFBOARDING.value,
    TenantStatus.OFFBOARDED.value,
    TenantStatus.FAILED.value,
}


CONFIG_VERSION_FIELD = "config_version"

# Raise the recorded version, never lower it (writers race: the newest version must win).
_RAISE_CONFIG_VERSION = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if tonumber(ARGV[2]) > current then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    return 1
end
return 0
"""


def access_key(tenant_id: uuid.UUID) -> str:
    """One hash per tenant: field ``status``, a field ``revoked:<client id>`` per revoked
    client, and ``config_version``. One key, so an eviction or a flush loses all of it or none
    of it."""
    return tenant_key(tenant_id, "edge", "access")


@dataclass(frozen=True)
class Access:
    """The answer of one access check."""

    #: Why the tenant/client may not act now, or None when it may.
    refusal: str | None
    #: The tenant's configuration version as Redis recorded it; None when Redis has none
    #: (not recorded yet, the hash was lost, or Redis did not answer).
    config_version: int | None = None


def _revoked_field(client_id: str) -> str:
    return f"revoked:{client_id}"


class AccessGuard:
    """The per-request revocation check and the writes that keep it current."""

    def __init__(self, *, redis: Redis, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.redis = redis
        self.sessions = sessions
        self._raise_config_version = redis.register_script(_RAISE_CONFIG_VERSION)

    async def refusal(self, *, tenant_id: uuid.UUID, client_id: str | None) -> str | None:
        """Why this tenant/client may not act now, or None when it may."""
        return (await self.check(tenant_id=tenant_id, client_id=client_id)).refusal

    async def check(self, *, tenant_id: uuid.UUID, client_id: str | None) -> Access:
        """Whether this tenant/client may act now, and the tenant's recorded config version."""
        redis_ok = True
        key = access_key(tenant_id)
        try:
            fields = ["status", CONFIG_VERSION_FIELD]
            if client_id is not None:
                fields.append(_revoked_field(client_id))
            values = await self.redis.hmget(key, fields)
            raw = values[0]
            status = raw.decode() if isinstance(raw, bytes) else raw
            version = int(values[1]) if values[1] is not None else None
            if client_id is not None and values[2] is not None:
                return Access("client credentials revoked")
            if status == TenantStatus.ACTIVE.value:
                return Access(None, version)
            if status in _REFUSED_STATUSES:
                return Access(f"tenant is {status}")
        except RedisError as exc:
            redis_ok = False
            log.warning(
                "access check falls back to Postgres", extra={"error_type": type(exc).__name__}
            )
        async with self.sessions() as session:
            status, revoked = await repo.access_state(
                session=session, tenant_id=tenant_id, client_id=client_id
            )
            revoked_ids = await repo.revoked_client_ids(session=session, tenant_id=tenant_id)
        if status is None:
            return Access("unknown tenant")
        if redis_ok:
            # Rebuild the mirror in one transaction: the revocations first, then the status
            # (HSETNX: never overwrite a refusal written meanwhile by an offboarding), so no
            # reader ever sees a status without the revocations that go with it.
            with contextlib.suppress(RedisError):
                pipe = self.redis.pipeline(transaction=True)
                if revoked_ids:
                    pipe.hset(key, mapping={_revoked_field(c): "1" for c in revoked_ids})
                pipe.hsetnx(key, "status", status)
                await pipe.execute()
        if revoked:
            return Access("client credentials revoked or unknown")
        if status != TenantStatus.ACTIVE.value:
            return Access(f"tenant is {status}")
        return Access(None)

    async def set_status(self, *, tenant_id: uuid.UUID, status: str) -> None:
        """Record a tenant's status in Redis (raises if Redis cannot be written)."""
        await self.redis.hset(access_key(tenant_id), "status", status)

    async def revoke(self, *, tenant_id: uuid.UUID, client_ids: list[str]) -> None:
        """Record revoked clients in Redis (raises if Redis cannot be written)."""
        if client_ids:
            await self.redis.hset(
                access_key(tenant_id), mapping={_revoked_field(c): "1" for c in client_ids}
            )

    async def unrevoke(self, *, tenant_id: uuid.UUID, client_id: str) -> None:
        """Forget a revocation (only for the bootstrap operator, whose secret was reset)."""
        await self.redis.hdel(access_key(tenant_id), _revoked_field(client_id))

    async def record_config_version(self, *, tenant_id: uuid.UUID, version: int) -> None:
        """Record a committed configuration version (raises if Redis cannot be written; a lower
        version than the one recorded is ignored)."""
        await self._raise_config_version(
            keys=[access_key(tenant_id)], args=[CONFIG_VERSION_FIELD, version]
        )
