"""The committed AsyncAPI documents (docs/asyncapi) are what the services' brokers declare now."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import ROOT, SERVICES, load_module

pytestmark = pytest.mark.unit


def test_every_asyncapi_document_matches_its_service(tmp_path: Path) -> None:
    generator = load_module(ROOT / "scripts" / "asyncapi.py", "asyncapi_export")
    written = generator.generate(tmp_path)
    assert sorted(path.stem for path in written) == sorted(SERVICES)
    for path in written:
        committed = ROOT / "docs" / "asyncapi" / path.name
        assert committed.read_text() == path.read_text(), (
            f"docs/asyncapi/{path.name} is stale: run `make schemas`"
        )
