"""The served edge's migrations: an upgrade runs in a child process and a database already at
the newest revision is left alone, so the edge itself never imports Alembic."""

from __future__ import annotations

import json
import subprocess
import sys

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from tenantry_auth.app import head_revisions

pytestmark = pytest.mark.integration

MIGRATE_TWICE = """
import asyncio, json, sys
from tenantry_auth.app import migrate
from tenantry_auth.config import Settings

settings = Settings(postgres_dsn=sys.argv[1], environment="test")
asyncio.run(migrate(settings, upgrade_in_child=True))   # a new database: upgraded
asyncio.run(migrate(settings, upgrade_in_child=True))   # at the newest revision: left alone
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"alembic_imported": bool(loaded & {"alembic", "mako"})}))
"""


async def test_migrate_upgrades_in_a_child_and_never_imports_alembic(make_database) -> None:
    dsn = await make_database("auth_migrate")
    done = subprocess.run(
        [sys.executable, "-c", MIGRATE_TWICE, dsn], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"alembic_imported": False}
    url = make_url(dsn)
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        versions = {
            r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")
        }
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert versions == head_revisions()
    assert {"tenants", "clients", "tenant_configs", "signing_keys"} <= tables
