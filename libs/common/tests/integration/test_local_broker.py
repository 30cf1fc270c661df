"""The local Tansu broker starts with the number of tokio workers the project sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from tenantry_common.localstack import free_port, start_tansu, stop_process

pytestmark = pytest.mark.integration


def _started_tansu(tmp_path: Path, workers_setting: str | None) -> tuple[int, list[bytes]]:
    """Start Tansu, and return its tokio threads (workers; tokio names its blocking-pool
    threads alike, but starts those only when needed) and its environment; then stop it."""
    broker = start_tansu(free_port(), tmp_path / f"tansu-{workers_setting}.log")
    try:
        tasks = Path(f"/proc/{broker.pid}/task")
        threads = sum(
            (task / "comm").read_text().strip() == "tokio-rt-worker" for task in tasks.iterdir()
        )
        return threads, Path(f"/proc/{broker.pid}/environ").read_bytes().split(b"\0")
    finally:
        stop_process(broker)


def test_tansu_runs_one_tokio_worker_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKIO_WORKER_THREADS", raising=False)
    monkeypatch.setenv("TANSU_WORKER_THREADS", "3")
    three, environ = _started_tansu(tmp_path, "3")
    assert b"TOKIO_WORKER_THREADS=3" in environ

    monkeypatch.delenv("TANSU_WORKER_THREADS")
    one, environ = _started_tansu(tmp_path, None)
    assert b"TOKIO_WORKER_THREADS=1" in environ
    assert three - one == 2, f"{one} tokio threads by default, {three} with three workers"
