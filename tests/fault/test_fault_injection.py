"""Fault injection under load (the same run as ``scripts/fault.py``): kill -9 of every consumer
service, several times, and a restart of Postgres and of Redis, while chat requests flow;
then every request answered once or refused clearly, metering exact, audit exactly once,
budgets equal to the ledger.

The run brings its own broker, Postgres cluster and Redis (it restarts them, so it must not
share them with other tests); the model is an instant OpenAI-compatible server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault.run import FaultConfig, run_fault_injection

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


def test_kill9_and_store_restarts_under_load_lose_and_double_count_nothing(tmp_path: Path) -> None:
    report = run_fault_injection(work_dir=tmp_path, config=FaultConfig())
    print(report.render())
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert report.ok, "\n".join(failed) or "no checks ran"
