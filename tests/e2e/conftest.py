"""The whole system for end-to-end tests: five service processes on free ports, wired to this
session's broker, fresh databases, the shared Redis and the real SmolLM2 model server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from tenantry_common.testing.fixtures import private_broker

from tests.e2e.harness import System, build_system

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The whole system gets a broker of its own: its consumer groups (the services' real ones)
    must not inherit the backlog that the packages' tests left on the session broker."""
    with private_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def operator_secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("operator") / "operator.secret"
    path.write_text(secrets.token_urlsafe(32))
    return path


@pytest.fixture(scope="session")
def system(
    kafka_bootstrap: str,
    redis_url: str,
    model_server_url: str,
    make_database,
    operator_secret_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[System]:
    """All five services, started once per test session and stopped at its end."""

    async def databases() -> dict[str, str]:
        return {name: await make_database(f"e2e_{name}") for name in ("auth", "metering", "audit")}

    dbs = asyncio.run(databases())
    audit_db = make_url(dbs["audit"]).database
    work = tmp_path_factory.mktemp("system")
    system = build_system(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        model_base_url=model_server_url,
        databases=dbs,
        work_dir=work,
        extra_env={
            "auth": {
                "TENANTRY_BOOTSTRAP_OPERATOR_SECRET": operator_secret_file.read_text(),
                "TENANTRY_CHAT_DEADLINE_S": "90",
            },
            "audit": {
                "TENANTRY_WRITER_DSN": (
                    f"postgresql+asyncpg://tenantry_audit_writer@127.0.0.1:5432/{audit_db}"
                ),
                "TENANTRY_ANCHOR_INTERVAL_S": "5",
            },
            "retrieval": {"TENANTRY_CHROMA_PATH": str(work / "chroma")},
            # The local model on a busy 2-core machine can be slow to start an answer.
            "inference": {"TENANTRY_MODEL_TIMEOUT_S": "180"},
        },
    )
    try:
        system.start()
        yield system
    finally:
        system.stop()
        logs = work / "logs"
        for log in sorted(logs.glob("*.log")):
            # Kept for a failing run's post-mortem: copied where CI can show it.
            target = ROOT / "var" / "log" / "e2e" / log.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(log.read_bytes())
