"""The gateway bench reads the edge's operator secret when it onboards, not when it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run

pytestmark = pytest.mark.unit


def _bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str | None) -> run.Bench:
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "VAR", tmp_path / "var" / "bench")
    monkeypatch.setattr(run.procs, "http_status", lambda *_a, **_k: (200, b""))
    monkeypatch.delenv("TENANTRY_BOOTSTRAP_OPERATOR_SECRET", raising=False)
    args = argparse.Namespace(edge_url="http://127.0.0.1:8000", operator_secret=secret, tenants=2)
    return run.Bench(args)


def _onboarding_secret(bench: run.Bench, monkeypatch: pytest.MonkeyPatch) -> str:
    seen: list[str] = []

    def prepare_tenants(*, operator_secret: str, **_: Any) -> list[str]:
        seen.append(operator_secret)
        return ["token-a", "token-b"]

    monkeypatch.setattr(run.tenantry, "prepare_tenants", prepare_tenants)
    bench.prepare_tenantry()
    assert bench.pending == {}
    return seen[0]


def test_a_secret_the_fresh_stack_created_after_the_start_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench(tmp_path, monkeypatch, secret=None)
    # What `--fresh-stack` does on a fresh clone: the first `scripts/stack.py up` writes it.
    (tmp_path / "var" / "operator.secret").write_text("made-by-the-stack\n")
    assert _onboarding_secret(bench, monkeypatch) == "made-by-the-stack"


def test_a_secret_given_on_the_command_line_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench(tmp_path, monkeypatch, secret="given")
    (tmp_path / "var" / "operator.secret").write_text("made-by-the-stack\n")
    assert _onboarding_secret(bench, monkeypatch) == "given"
