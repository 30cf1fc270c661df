"""Audit's append path, client CPU per record: this tree's ``append_records`` against another
revision's, interleaved in one process on one fresh database (ratios, on a noisy machine).

    .venv/bin/python bench/audit/bench_append.py --baseline 8b5c9c0

Each round appends 30 batches of 40 records (20 tenants, 2 each; the shape of a busy gateway: many
tenants per batch, few records each) with each version, alternating which goes first, and
records this process's CPU time per record. The first two rounds are warm-up. The baseline's
``tenantry_audit/service.py`` is read from git (``git show REV:…``) and imported beside this
tree's; both use this tree's tables, chain and models. Needs the local Postgres only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

import asyncpg
import tenantry_audit.service as current
from tenantry_audit.app import MIGRATIONS
from tenantry_common.db import create_engine, run_migrations
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "services/audit/src/tenantry_audit/service.py"


def baseline_module(revision: str, directory: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{revision}:{SERVICE}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = directory / "audit_service_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("audit_service_baseline", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def batch(tenants: list[uuid.UUID]) -> list[AuditRecorded]:
    return [
        AuditRecorded(
            tenant_id=tenant,
            audit_type=AuditType.DATA_ACCESS,
            source="bench",
            actor="bench-user",
            resource_type="chat",
            resource_id=str(uuid.uuid4()),
            action="chat",
            status=AuditStatus.SUCCESS,
            details={"prompt_tokens": 12},
        )
        for tenant in tenants
        for _ in range(2)
    ]


async def run(admin_dsn: str, baseline: ModuleType, rounds: int) -> dict[str, list[float]]:
    name = f"tenantry_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
    dsn = f"{dsn}/{name}"
    per_record: dict[str, list[float]] = {"baseline": [], "current": []}
    try:
        await asyncio.to_thread(run_migrations, dsn, MIGRATIONS)
        engine = create_engine(dsn, pool_size=2)
        tenants = [uuid.uuid4() for _ in range(20)]
        versions = [("baseline", baseline), ("current", current)]
        for i in range(rounds):
            for label, module in versions if i % 2 else versions[::-1]:
                batches = [batch(tenants) for _ in range(30)]
                started = time.process_time()
                for events in batches:
                    await module.append_records(engine=engine, events=events)
                records = sum(len(b) for b in batches)
                per_record[label].append((time.process_time() - started) / records * 1e6)
        await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return per_record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        baseline = baseline_module(args.baseline, Path(directory))
        per_record = asyncio.run(run(args.admin_dsn, baseline, args.rounds))
    medians = {k: statistics.median(v[2:]) for k, v in per_record.items()}
    for label, values in per_record.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{label}: median {medians[label]:.0f} µs CPU per record; rounds {rounds}")
    print(f"current / baseline: {medians['current'] / medians['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
