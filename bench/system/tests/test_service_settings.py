"""bench_system restarts retrieval with the settings it was started with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_system

pytestmark = pytest.mark.unit


def test_a_running_process_tenantry_settings_are_read_and_nothing_else() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TENANTRY_KAFKA_FETCH_MAX_WAIT_MS": "10",
        "TENANTRY_EMPTY": "",
        "OTHER": "x=y",
    }
    # Popen can return while the child's exec is still setting up its new stack, when
    # /proc/<pid>/environ reads empty (CI saw it); a line from the child says its exec is done,
    # and the child waits for its stdin to close.
    proc = subprocess.Popen(
        ["sh", "-c", "echo started; read _"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        assert bench_system.service_settings(proc.pid) == {
            "TENANTRY_KAFKA_FETCH_MAX_WAIT_MS": "10",
            "TENANTRY_EMPTY": "",
        }
    finally:
        proc.communicate(timeout=10)
