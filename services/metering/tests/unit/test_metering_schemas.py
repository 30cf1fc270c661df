"""The analysts' topics' JSON Schemas in docs/schemas are what the events declare now."""

from __future__ import annotations

from pathlib import Path

import pytest
from tenantry_metering.schemas import ANALYST_TOPICS, export

pytestmark = pytest.mark.unit

COMMITTED = Path(__file__).resolve().parents[4] / "docs" / "schemas"


def test_every_analyst_topic_schema_in_docs_is_current(tmp_path: Path) -> None:
    written = export(tmp_path)
    assert sorted(path.stem for path in written) == sorted(ANALYST_TOPICS)
    for path in written:
        assert (COMMITTED / path.name).read_text() == path.read_text(), (
            f"docs/schemas/{path.name} is stale: run `make schemas`"
        )
