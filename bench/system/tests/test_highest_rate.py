"""bench_system's search for the highest sustained rate: the steps and when a step fails."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_system

pytestmark = pytest.mark.unit


def run(*, requests: int = 100, ok: int = 100, p99: float | None = 40.0) -> dict[str, Any]:
    statuses = {"200": ok} | ({"503": requests - ok} if ok < requests else {})
    return {
        "requests": requests,
        "ok": ok,
        "statuses": statuses,
        "achieved_ok_per_s": float(ok),
        "p50_ms": 20.0,
        "p99_ms": p99,
        "load_average": "1.0 1.0 1.0",
    }


def test_a_step_with_every_request_answered_within_the_bound_is_sustained() -> None:
    assert bench_system.sustained(run(p99=500.0), max_p99_ms=500) is None


def test_a_request_not_answered_fails_the_step_and_says_how() -> None:
    reason = bench_system.sustained(run(ok=99), max_p99_ms=500)
    assert reason == "1 of 100 not answered: {'503': 1}"


def test_a_p99_over_the_bound_fails_the_step() -> None:
    assert bench_system.sustained(run(p99=500.1), max_p99_ms=500) == "p99 500.1 ms > 500 ms"
    assert bench_system.sustained(run(ok=0, requests=0, p99=None), max_p99_ms=500) is not None


def test_the_rates_rise_geometrically_to_the_ceiling() -> None:
    assert bench_system.step_rates(50, 1.2, 130) == [50, 60, 72, 86, 103, 124]
    # Rounding never repeats a rate.
    assert bench_system.step_rates(2, 1.2, 6) == [2, 3, 4, 5, 6]
    for start, factor, ceiling in ((0, 1.2, 10), (5, 1.0, 10), (20, 1.2, 10)):
        with pytest.raises(ValueError, match="factor > 1"):
            bench_system.step_rates(start, factor, ceiling)


def test_the_search_stops_at_the_first_rate_not_sustained_twice() -> None:
    offered: list[float] = []

    def load(rate: float) -> dict[str, Any]:
        offered.append(rate)
        return run(p99=30.0 if rate <= 72 else 900.0)

    found = bench_system.find_highest_rate(load, [50, 60, 72, 86, 103], max_p99_ms=500)
    assert offered == [50, 60, 72, 86, 86]
    assert found["highest_sustained_per_s"] == 72
    assert found["first_not_sustained_per_s"] == 86
    assert [(s["offered_per_s"], s["attempt"]) for s in found["steps"]] == [
        (50, 1),
        (60, 1),
        (72, 1),
        (86, 1),
        (86, 2),
    ]
    assert [s["not_sustained"] is None for s in found["steps"]] == [True, True, True, False, False]
    report = bench_system.markdown(
        {
            "started_at": "x",
            "tenants": 1,
            "chunks": 1,
            "rate": 1,
            "duration_s": 1,
            "modes": {},
            "highest": {"rag": found},
            "rss_at_rest_mb": {},
        }
    )
    assert "rag: highest sustained rate **72 req/s**" in report
    assert "86/s was not" in report
    row = "| 86 | 2 | 100 / 100 | 100.0 | 20.0 | 900.0 | 1.0 1.0 1.0 | p99 900.0 ms > 500 ms |"
    assert row in report


def test_a_search_that_reaches_the_ceiling_has_no_upper_bound() -> None:
    found = bench_system.find_highest_rate(lambda rate: run(), [50, 60], max_p99_ms=500)
    assert found["highest_sustained_per_s"] == 60
    assert found["first_not_sustained_per_s"] is None


def test_a_first_step_not_sustained_leaves_no_highest_rate() -> None:
    found = bench_system.find_highest_rate(lambda rate: run(ok=0), [50, 60], max_p99_ms=500)
    assert found["highest_sustained_per_s"] is None
    assert found["first_not_sustained_per_s"] == 50


def test_one_stall_is_run_again_and_does_not_end_the_search() -> None:
    stalls = iter([False, True, False, False])

    def load(rate: float) -> dict[str, Any]:
        return run(p99=3_000.0 if next(stalls) else 40.0)

    found = bench_system.find_highest_rate(load, [50, 60, 72], max_p99_ms=500)
    assert found["highest_sustained_per_s"] == 72
    assert [(s["offered_per_s"], s["attempt"]) for s in found["steps"]] == [
        (50, 1),
        (60, 1),
        (60, 2),
        (72, 1),
    ]


def test_chunks_count_only_for_the_tenants_the_fill_was_written_for() -> None:
    filled = {"tenant_ids": ["a", "b"], "chunks": 10_000}
    assert bench_system.chunks_filled(["a", "b"], filled, 10_000)
    assert bench_system.chunks_filled(["a"], filled, 1_000)
    # New tenants onboarded on a restarted broker: their collections are empty.
    assert not bench_system.chunks_filled(["a", "c"], filled, 10_000)
    assert not bench_system.chunks_filled(["a"], filled, 20_000)
    assert not bench_system.chunks_filled(["a"], None, 1)


def test_the_report_says_when_the_collections_were_empty() -> None:
    result: dict[str, Any] = {
        "started_at": "x",
        "tenants": 1,
        "chunks": 10_000,
        "rate": 1,
        "duration_s": 1,
        "modes": {},
        "rss_at_rest_mb": {},
    }
    assert "not filled" not in bench_system.markdown(result | {"chunks_filled": True})
    assert "not filled" in bench_system.markdown(result | {"chunks_filled": False})
    found = bench_system.find_highest_rate(
        lambda rate: {"chunks_filled": False} | run(), [50], max_p99_ms=500
    )
    report = bench_system.markdown(result | {"highest": {"rag": found}})
    assert "some steps' tenants had empty documents collections" in report
