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
    proc = subprocess.Popen(["sleep", "30"], env=env)
    try:
        assert bench_system.service_settings(proc.pid) == {
            "TENANTRY_KAFKA_FETCH_MAX_WAIT_MS": "10",
            "TENANTRY_EMPTY": "",
        }
    finally:
        proc.kill()
        proc.wait()
