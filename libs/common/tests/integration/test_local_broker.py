"""The local Tansu broker starts with the number of tokio workers the project sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tenantry_common.localstack import free_port, start_tansu, stop_process

pytestmark = pytest.mark.integration


def _tokio_workers(pid: int) -> int:
    tasks = Path(f"/proc/{pid}/task")
    return sum((task / "comm").read_text().strip() == "tokio-rt-worker" for task in tasks.iterdir())


@pytest.mark.parametrize(("override", "workers"), [(None, 1), ("2", 2)])
def test_tansu_runs_one_tokio_worker_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str | None, workers: int
) -> None:
    monkeypatch.delenv("TOKIO_WORKER_THREADS", raising=False)
    if override is None:
        monkeypatch.delenv("TANSU_WORKER_THREADS", raising=False)
    else:
        monkeypatch.setenv("TANSU_WORKER_THREADS", override)
    broker = start_tansu(free_port(), tmp_path / "tansu.log")
    try:
        assert _tokio_workers(broker.pid) == workers
        environ = Path(f"/proc/{broker.pid}/environ").read_bytes().split(b"\0")
        assert f"TOKIO_WORKER_THREADS={workers}".encode() in environ
    finally:
        stop_process(broker)
    assert os.environ.get("TOKIO_WORKER_THREADS") is None
