"""The whole flow through HTTP against all services and the real local model: the demo itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import System

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_with_isolation_cache_budget_and_audit(
    system: System, operator_secret_file: Path
) -> None:
    env = os.environ | {
        "TENANTRY_EDGE_URL": system.edge.url,
        "TENANTRY_OPERATOR_SECRET_FILE": str(operator_secret_file),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Both tenants answered from their own documents, a paraphrase came from the cache,
    # a tiny budget was refused, and each audit export was its own.
    assert output.count("→ served from the semantic cache: True") == 2, output[-4000:]
    assert "429" in output
    assert output.count("Warranty uploaded as a PDF file → 202") == 1, output[-4000:]
    assert output.count("search, no model asked (POST /v1/search):") == 2, output[-4000:]
    assert output.count("records, all of tenant") == 2
    for service in system.services.values():
        assert service.healthy(), f"{service.name} is not healthy after the demo"
