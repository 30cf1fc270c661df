"""Each tenant's configuration in memory, for the chat path: read through from Postgres and
used for as long as its version is the newest one Redis has recorded.

* **Authority**: Postgres (``tenant_configs``). Only configurations read from it, or committed
  by this replica, are held: never one from ``tenants.config.v1``, whose records are published
  *before* their commit (a broker failure must leave no unpublished version), so the topic can
  carry a version that never commits (e.g. the loser of two concurrent changes, which publishes
  the same version number as the winner).
* **Invalidation**: after a change commits, its version is recorded in the tenant's Redis access
  hash (``AccessGuard.record_config_version``, never lowered). Every request already reads that
  hash to check access (one HMGET); the version comes back with it, and a held config older
  than it, or a hash with no version, means one read from Postgres. So a change made through
  any replica is used by every replica for every request admitted after the change returned.
* **Bound when Redis missed the version** (its write failed after the commit): an entry is
  reread after ``max_age_s`` at the latest, so no replica uses a superseded config for longer.
* **Isolation**: the key is the tenant id of the verified token, and the read is the tenant
  scoped query of ``repository.current_config``; nothing else chooses an entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenantry_common.events import TenantConfig

from tenantry_auth import repository as repo
from tenantry_auth.access import AccessGuard

log = logging.getLogger("tenantry.auth.configs")


@dataclass(frozen=True)
class HeldConfig:
    version: int
    config: TenantConfig
    #: ``time.monotonic()`` when it was read from Postgres (or committed here).
    loaded_at: float


class ConfigCache:
    """Tenants' current configurations, read through from Postgres (see the module docstring)."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        guard: AccessGuard,
        max_age_s: float,
        max_entries: int,
    ) -> None:
        self.sessions = sessions
        self.guard = guard
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._held: OrderedDict[uuid.UUID, HeldConfig] = OrderedDict()
        self._reading: dict[uuid.UUID, asyncio.Task[HeldConfig | None]] = {}
        #: Requests answered from memory / reads from Postgres (for tests and metrics).
        self.hits = 0
        self.reads = 0

    async def get(
        self, *, tenant_id: uuid.UUID, recorded_version: int | None
    ) -> tuple[TenantConfig, int] | None:
        """The tenant's current (config, version), or None when it has no configuration.

        ``recorded_version`` is the version Redis recorded (from the access check); None means
        unknown, and the config is read from Postgres.
        """
        held = self._held.get(tenant_id)
        if (
            held is not None
            and recorded_version is not None
            and held.version >= recorded_version
            and time.monotonic() - held.loaded_at < self.max_age_s
        ):
            self.hits += 1
            self._held.move_to_end(tenant_id)
            return held.config, held.version
        held = await self._read_shared(tenant_id)
        if held is not None and recorded_version is not None and held.version < recorded_version:
            # The shared read began before that version committed: read again, on our own.
            held = await self._read(tenant_id)
        if held is None:
            return None
        if recorded_version is None or recorded_version < held.version:
            # Let every replica use its memory from the next request on.
            await self._record(tenant_id, held.version)
        return held.config, held.version

    async def committed(self, *, tenant_id: uuid.UUID, version: int, config: TenantConfig) -> None:
        """A change this replica committed: hold it, and record its version for every replica."""
        self._keep(tenant_id, HeldConfig(version, config, time.monotonic()))
        await self._record(tenant_id, version)

    def forget(self, tenant_id: uuid.UUID) -> None:
        """Drop a tenant's entry (e.g. when it is offboarded)."""
        self._held.pop(tenant_id, None)

    async def _record(self, tenant_id: uuid.UUID, version: int) -> None:
        try:
            await self.guard.record_config_version(tenant_id=tenant_id, version=version)
        except RedisError as exc:
            # Replicas holding an older version use it for at most max_age_s more.
            log.warning(
                "config version not recorded in Redis",
                extra={"tenant_id": str(tenant_id), "error_type": type(exc).__name__},
            )

    async def _read_shared(self, tenant_id: uuid.UUID) -> HeldConfig | None:
        # One read per tenant at a time: a burst on a cold entry costs one query, not N.
        reading = self._reading.get(tenant_id)
        if reading is None or reading.done():
            reading = asyncio.create_task(self._read(tenant_id))
            self._reading[tenant_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(tenant_id, None))
        return await asyncio.shield(reading)

    async def _read(self, tenant_id: uuid.UUID) -> HeldConfig | None:
        async with self.sessions() as session:
            row = await repo.current_config(session=session, tenant_id=tenant_id)
        self.reads += 1
        if row is None:
            return None
        held = HeldConfig(row.version, TenantConfig.model_validate(row.config), time.monotonic())
        self._keep(tenant_id, held)
        return held

    def _keep(self, tenant_id: uuid.UUID, held: HeldConfig) -> None:
        current = self._held.get(tenant_id)
        if current is not None and current.version > held.version:
            return  # a newer version is already held (versions only grow)
        self._held[tenant_id] = held
        self._held.move_to_end(tenant_id)
        while len(self._held) > self.max_entries:
            self._held.popitem(last=False)
