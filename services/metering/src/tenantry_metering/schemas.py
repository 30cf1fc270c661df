"""Export the analysts' topics' JSON Schemas: ``python -m tenantry_metering.schemas [dir]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tenantry_common.events import Event, UsageRecorded, UsageRolledUp
from tenantry_common.topics import USAGE, USAGE_DAILY

ANALYST_TOPICS: dict[str, type[Event]] = {
    USAGE.name: UsageRecorded,
    USAGE_DAILY.name: UsageRolledUp,
}


def export(directory: Path) -> list[Path]:
    """Write ``<topic>.json`` (the JSON Schema of the topic's event) for each analysts' topic."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, model in ANALYST_TOPICS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://tenantry.dev/schemas/{topic}.json"
        schema["x-topic"] = topic
        path = directory / f"{topic}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for written in export(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written)
