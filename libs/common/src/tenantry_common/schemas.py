"""Export the event contracts as JSON Schema files (for analysts and other consumers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tenantry_common.events import ALL_EVENTS
from tenantry_common.topics import ALL_TOPICS


def export_schemas(directory: Path) -> list[Path]:
    """Write ``<Event>.json`` for every event and ``topics.json`` (every topic, its partitions
    and description) into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in ALL_EVENTS:
        schema = model.model_json_schema(mode="serialization")
        schema["required"] = sorted(
            set(schema.get("required", []))
            | {"event_id", "event_type", "schema_version", "tenant_id", "occurred_at"}
        )
        schema["$id"] = f"https://tenantry.dev/schemas/{model.__name__}.json"
        path = directory / f"{model.__name__}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    index = {t.name: {"partitions": t.partitions, "description": t.description} for t in ALL_TOPICS}
    topics = directory / "topics.json"
    topics.write_text(json.dumps(index, indent=2) + "\n")
    written.append(topics)
    return written


if __name__ == "__main__":
    for path in export_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(path)
