"""bench_system's CPU accounting per load: each process's CPU per answered request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_system

pytestmark = pytest.mark.unit


def test_each_process_gets_its_cpu_per_answered_request_and_the_cores_add_up() -> None:
    before = {"retrieval": 10.0, "kafka": 2.0, "load generator": 1.0}
    after = {"retrieval": 12.4, "kafka": 2.6, "load generator": 1.2}
    assert bench_system.cpu_per_answer(before, after, ok=300, elapsed_s=3.0) == {
        "cpu_ms_per_ok": {"retrieval": 8.0, "kafka": 2.0, "load generator": 0.67},
        "cpu_cores": 1.07,
    }


def test_a_process_missing_from_a_reading_is_left_out_not_counted_as_zero() -> None:
    before = {"retrieval": 10.0, "inference": 5.0}
    after = {"inference": 5.5, "audit": 0.3}  # retrieval not running; audit not yet
    assert bench_system.cpu_per_answer(before, after, ok=100, elapsed_s=1.0) == {
        "cpu_ms_per_ok": {"inference": 5.0},
        "cpu_cores": 0.5,
    }


def test_no_answers_give_no_per_request_figures() -> None:
    assert bench_system.cpu_per_answer({"a": 1.0}, {"a": 2.0}, ok=0, elapsed_s=1.0) == {
        "cpu_ms_per_ok": {},
        "cpu_cores": 1.0,
    }
