"""The edge's in-memory tenant configurations (``configs.ConfigCache``) with a fake Postgres and
a fake Redis recorder: when memory is used, when Postgres is read, and that tenants never share
an entry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from tenantry_auth.config import Settings
from tenantry_auth.configs import ConfigCache
from tenantry_auth.service import default_config
from tenantry_common.events import Tier

pytestmark = pytest.mark.unit

SETTINGS = Settings(environment="test")


@dataclass
class Row:
    version: int
    config: dict[str, Any]


@dataclass
class FakePostgres:
    """``tenant_configs`` as (tenant → newest row); counts the reads; can hold reads back."""

    rows: dict[uuid.UUID, Row] = field(default_factory=dict)
    reads: list[uuid.UUID] = field(default_factory=list)
    gate: asyncio.Event | None = None

    def commit(self, tenant_id: uuid.UUID, version: int, max_tokens: int) -> None:
        config = default_config(name=f"t-{tenant_id.hex[:4]}", tier=Tier.PRO, settings=SETTINGS)
        config = config.model_copy(update={"max_tokens_per_request": max_tokens})
        self.rows[tenant_id] = Row(version, config.model_dump(mode="json"))

    def sessions(self) -> Any:
        db = self

        class Session:
            async def scalar(self, statement: Any) -> Row | None:
                # The tenant scoped WHERE clause of repository.current_config, as compiled.
                tenant_id = statement.compile().params["tenant_id_1"]
                db.reads.append(tenant_id)
                row = db.rows.get(tenant_id)
                if db.gate is not None:
                    await db.gate.wait()
                return row

        @asynccontextmanager
        async def open_session() -> AsyncIterator[Session]:
            yield Session()

        return open_session


@dataclass
class FakeRecorder:
    """``AccessGuard.record_config_version`` (never lowers), optionally failing."""

    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    down: bool = False

    async def record_config_version(self, *, tenant_id: uuid.UUID, version: int) -> None:
        if self.down:
            raise RedisConnectionError("redis is down")
        self.versions[tenant_id] = max(version, self.versions.get(tenant_id, 0))


def make_cache(
    db: FakePostgres, redis: FakeRecorder, *, max_age_s: float = 60.0, max_entries: int = 100
) -> ConfigCache:
    return ConfigCache(
        sessions=db.sessions(),
        guard=redis,  # type: ignore[arg-type]
        max_age_s=max_age_s,
        max_entries=max_entries,
    )


async def test_held_config_is_used_while_redis_records_no_newer_version() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 3, max_tokens=100)
    cache = make_cache(db, redis)
    first = await cache.get(tenant_id=tenant, recorded_version=3)
    for _ in range(5):
        assert await cache.get(tenant_id=tenant, recorded_version=3) == first
    assert db.reads == [tenant]
    assert cache.hits == 5


async def test_a_newer_recorded_version_is_read_from_postgres() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 1, max_tokens=100)
    cache = make_cache(db, redis)
    await cache.get(tenant_id=tenant, recorded_version=1)
    db.commit(tenant, 2, max_tokens=77)  # committed through another replica
    found = await cache.get(tenant_id=tenant, recorded_version=2)
    assert found is not None
    config, version = found
    assert (version, config.max_tokens_per_request) == (2, 77)
    assert len(db.reads) == 2


async def test_no_recorded_version_reads_postgres_and_records_it_for_every_replica() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 4, max_tokens=100)
    cache = make_cache(db, redis)
    await cache.get(tenant_id=tenant, recorded_version=None)
    await cache.get(tenant_id=tenant, recorded_version=None)  # e.g. the Redis hash was lost
    assert len(db.reads) == 2
    assert redis.versions[tenant] == 4


async def test_an_entry_is_reread_after_max_age_even_without_a_newer_version() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 1, max_tokens=100)
    cache = make_cache(db, redis, max_age_s=0.05)
    await cache.get(tenant_id=tenant, recorded_version=1)
    db.commit(tenant, 2, max_tokens=55)  # its version never reached Redis
    found = await cache.get(tenant_id=tenant, recorded_version=1)
    assert found is not None
    assert found[1] == 1  # within max age: the held version
    await asyncio.sleep(0.06)
    found = await cache.get(tenant_id=tenant, recorded_version=1)
    assert found is not None
    assert found[1] == 2


async def test_tenants_never_share_an_entry() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    one, two = uuid.uuid4(), uuid.uuid4()
    db.commit(one, 1, max_tokens=111)
    db.commit(two, 1, max_tokens=222)
    cache = make_cache(db, redis)
    for _ in range(3):
        for tenant, expected in ((one, 111), (two, 222)):
            found = await cache.get(tenant_id=tenant, recorded_version=1)
            assert found is not None
            assert found[0].max_tokens_per_request == expected
    assert sorted(map(str, db.reads)) == sorted(map(str, [one, two]))


async def test_a_tenant_without_configuration_gets_none() -> None:
    cache = make_cache(FakePostgres(), FakeRecorder())
    assert await cache.get(tenant_id=uuid.uuid4(), recorded_version=None) is None


async def test_a_burst_on_a_cold_entry_reads_postgres_once() -> None:
    db, redis = FakePostgres(gate=asyncio.Event()), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 1, max_tokens=100)
    cache = make_cache(db, redis)
    burst = [asyncio.create_task(cache.get(tenant_id=tenant, recorded_version=1)) for _ in range(8)]
    await asyncio.sleep(0.01)
    assert db.gate is not None
    db.gate.set()
    results = await asyncio.gather(*burst)
    assert len({r[1] for r in results if r}) == 1
    assert db.reads == [tenant]


async def test_a_shared_read_older_than_the_recorded_version_is_done_again() -> None:
    db, redis = FakePostgres(gate=asyncio.Event()), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 1, max_tokens=100)
    cache = make_cache(db, redis)
    early = asyncio.create_task(cache.get(tenant_id=tenant, recorded_version=None))
    await asyncio.sleep(0.01)  # its read returns version 1, held back by the gate
    gate = db.gate
    assert gate is not None
    db.gate = None  # later reads are not held
    db.commit(tenant, 2, max_tokens=88)
    late = asyncio.create_task(cache.get(tenant_id=tenant, recorded_version=2))
    await asyncio.sleep(0.01)
    gate.set()
    _, late_found = await asyncio.gather(early, late)
    assert late_found is not None
    assert late_found[1] == 2


async def test_a_committed_change_is_held_and_recorded_and_a_redis_failure_is_survived() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenant = uuid.uuid4()
    db.commit(tenant, 1, max_tokens=100)
    cache = make_cache(db, redis)
    await cache.get(tenant_id=tenant, recorded_version=1)
    db.commit(tenant, 2, max_tokens=99)
    config = default_config(name="t", tier=Tier.PRO, settings=SETTINGS)
    await cache.committed(tenant_id=tenant, version=2, config=config)
    assert redis.versions[tenant] == 2
    assert (await cache.get(tenant_id=tenant, recorded_version=2)) == (config, 2)
    assert len(db.reads) == 1
    redis.down = True
    await cache.committed(tenant_id=tenant, version=3, config=config)  # logged, not raised


async def test_the_number_of_tenants_held_is_bounded() -> None:
    db, redis = FakePostgres(), FakeRecorder()
    tenants = [uuid.uuid4() for _ in range(5)]
    for t in tenants:
        db.commit(t, 1, max_tokens=100)
    cache = make_cache(db, redis, max_entries=3)
    for t in tenants:
        await cache.get(tenant_id=t, recorded_version=1)
    assert len(cache._held) == 3
    assert list(cache._held) == tenants[2:]
