"""Process-level memory settings of the served edge (``tenantry_auth.runtime``) and the
migration head read without Alembic; each checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tenantry_auth.app import MIGRATIONS, head_revisions

pytestmark = pytest.mark.unit

ARGON2_IN_THREADS = """
import asyncio, json, sys
from pathlib import Path
from tenantry_auth.runtime import pin_mmap_threshold
from tenantry_auth.security import SecretHasher

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
hasher = SecretHasher(time_cost=1, memory_kib=19_456)

async def main():
    stored = await hasher.hash("s" * 40)
    before = rss_mib()
    await asyncio.gather(*(hasher.verify(stored, "wrong") for _ in range(4)))
    print(json.dumps({"pinned": pinned, "grown_mib": rss_mib() - before}))

asyncio.run(main())
"""


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_argon2_working_memory_goes_back_to_the_os_with_the_pinned_threshold() -> None:
    unpinned = json.loads(_run(ARGON2_IN_THREADS, "default"))
    pinned = json.loads(_run(ARGON2_IN_THREADS, "pin"))
    assert pinned["pinned"] is True
    # Four concurrent 19 MiB hashes: kept by the worker threads' arenas by default...
    assert unpinned["grown_mib"] > 19
    # ...and returned when freed once the threshold is pinned.
    assert pinned["grown_mib"] < 5


def test_the_served_edge_does_not_import_the_httpx_cli() -> None:
    code = (
        "import sys, json; from tenantry_auth.runtime import skip_httpx_cli; skip_httpx_cli(); "
        "import tenantry_auth.app, httpx; httpx.AsyncClient(); "
        "print(json.dumps([m for m in ('httpx._main', 'rich', 'pygments') "
        "if sys.modules.get(m) is not None]))"
    )
    assert json.loads(_run(code)) == []


def test_head_revisions_are_alembics_heads() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revisions() == set(ScriptDirectory.from_config(config).get_heads())
