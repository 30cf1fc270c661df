"""Whether a verified token may still be used: its tenant is active and its client is not
revoked. Checked on every request, on every replica, with no cache window.

Redis holds the fast answer (``tenant-status`` and ``revoked-clients`` per tenant). Changes
that *take away* access write Redis before their Postgres transaction commits (and abort it if
Redis cannot be written), so Redis never says "allowed" after Postgres says "refused". Changes
that *grant* access (activation) commit Postgres first. When Redis has no answer, or is down,
Postgres decides.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

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


def status_key(tenant_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "edge", "tenant-status")


def revoked_key(tenant_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "edge", "revoked-clients")


class AccessGuard:
    """The per-request revocation check and the writes that keep it current."""

    def __init__(self, *, redis: Redis, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.redis = redis
        self.sessions = sessions

    async def refusal(self, *, tenant_id: uuid.UUID, client_id: str | None) -> str | None:
        """Why this tenant/client may not act now, or None when it may."""
        redis_ok = True
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(status_key(tenant_id))
            if client_id is not None:
                pipe.sismember(revoked_key(tenant_id), client_id)
            results = await pipe.execute()
            status = results[0].decode() if results[0] is not None else None
            if client_id is not None and results[1]:
                return "client credentials revoked"
            if status == TenantStatus.ACTIVE.value:
                return None
            if status in _REFUSED_STATUSES:
                return f"tenant is {status}"
        except RedisError as exc:
            redis_ok = False
            log.warning(
                "access check falls back to Postgres", extra={"error_type": type(exc).__name__}
            )
        async with self.sessions() as session:
            status, revoked = await repo.access_state(
                session=session, tenant_id=tenant_id, client_id=client_id
            )
        if status is None:
            return "unknown tenant"
        if revoked:
            return "client credentials revoked or unknown"
        if redis_ok:
            # NX: never overwrite a refusal written meanwhile by an offboarding.
            with contextlib.suppress(RedisError):
                await self.redis.set(status_key(tenant_id), status, nx=True)
        if status != TenantStatus.ACTIVE.value:
            return f"tenant is {status}"
        return None

    async def set_status(self, *, tenant_id: uuid.UUID, status: str) -> None:
        """Record a tenant's status in Redis (raises if Redis cannot be written)."""
        await self.redis.set(status_key(tenant_id), status)

    async def revoke(self, *, tenant_id: uuid.UUID, client_ids: list[str]) -> None:
        """Record revoked clients in Redis (raises if Redis cannot be written)."""
        if client_ids:
            await self.redis.sadd(revoked_key(tenant_id), *client_ids)
