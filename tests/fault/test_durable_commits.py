"""Acknowledged commits survive a Postgres crash even where the server runs with
``synchronous_commit = off`` (the fault run's private cluster does, on purpose).

Every consumer commits its Kafka offsets right after its database commit; a commit that a
crash then takes back is a record lost for good. ``tenantry_common.db.create_engine`` raises such
sessions to ``synchronous_commit = on``. This found the audit records the fault run lost.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from tenantry_common.db import create_engine, ensure_database

from tests.fault.stores import PrivatePostgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _commit_rows(dsn: str, count: int) -> list[int]:
    """``count`` single-row transactions, one after another; the ids the server acknowledged."""
    engine = create_engine(dsn, pool_size=1)
    acknowledged: list[int] = []
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY)"))
        for n in range(count):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO acked (id) VALUES (:id)"), {"id": n})
            acknowledged.append(n)
    finally:
        await engine.dispose()
    return acknowledged


async def _stored(dsn: str) -> set[int]:
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg", "postgresql"))
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM acked")}
    finally:
        await conn.close()


def test_commits_acknowledged_before_a_crash_survive_it_with_synchronous_commit_off() -> None:
    pg = PrivatePostgres()  # started with fsync=off and synchronous_commit=off
    try:
        pg.init()
        pg.start()
        dsn = pg.dsn(f"durable_{uuid.uuid4().hex[:8]}")
        asyncio.run(ensure_database(dsn))
        acknowledged = asyncio.run(_commit_rows(dsn, 2_000))
        # At once, like the fault run: an immediate stop is a crash (no checkpoint, no flush).
        pg.restart(down_s=0.5)
        stored = asyncio.run(_stored(dsn))
    finally:
        pg.destroy()
    lost = set(acknowledged) - stored
    assert not lost, f"{len(lost)} acknowledged commits lost in the crash (last: {max(lost)})"


async def test_sessions_are_raised_from_synchronous_commit_off_and_stronger_ones_kept(
    make_database,
) -> None:
    off = await make_database("synccommit")
    strong = await make_database("synccommit")
    admin = await asyncpg.connect(off.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(
            f'ALTER DATABASE "{off.rsplit("/", 1)[1]}" SET synchronous_commit = off'
        )
        await admin.execute(
            f'ALTER DATABASE "{strong.rsplit("/", 1)[1]}" SET synchronous_commit = remote_apply'
        )
    finally:
        await admin.close()
    for dsn, expected in ((off, "on"), (strong, "remote_apply")):
        engine = create_engine(dsn, pool_size=2)
        try:
            # Several checkouts, in and out of transactions, on more than one pooled connection.
            async with engine.connect() as a, engine.connect() as b:
                seen = {
                    (await a.execute(text("SHOW synchronous_commit"))).scalar_one(),
                    (await b.execute(text("SHOW synchronous_commit"))).scalar_one(),
                }
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
            async with engine.connect() as conn:
                seen.add((await conn.execute(text("SHOW synchronous_commit"))).scalar_one())
        finally:
            await engine.dispose()
        assert seen == {expected}
