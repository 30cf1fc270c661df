"""Generate each service's AsyncAPI document from its FastStream broker (never by hand).

``python scripts/asyncapi.py [docs/asyncapi]`` writes ``<service>.yaml`` per service.
"""

from __future__ import annotations

import importlib
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from faststream.specification import AsyncAPI

SERVICES = ("auth", "retrieval", "inference", "metering", "audit")


def generate(directory: Path) -> list[Path]:
    """Build every service's app (nothing is started) and write its AsyncAPI YAML."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SERVICES:
        app_module = importlib.import_module(f"tenantry_{name}.app")
        config = importlib.import_module(f"tenantry_{name}.config")
        settings_cls = next(
            getattr(config, n)
            for n in dir(config)
            if n.endswith("Settings")
            and getattr(getattr(config, n), "__module__", "") == config.__name__
        )
        app = app_module.build_app(settings_cls())
        spec = AsyncAPI(
            app.state.broker,
            title=f"Tenantry {name}",
            version="1",
            description=f"Topics the {name} service consumes and produces.",
        )
        path = directory / f"{name}.yaml"
        path.write_text(_to_yaml(spec.to_specification().to_jsonable()))
        written.append(path)
    return written


def _to_yaml(document: dict[str, Any]) -> str:
    """FastStream's YAML, with channels, operations and components sorted by name: FastStream
    lists them in an order that changes from run to run, which made every export a diff."""
    for section in ("channels", "operations"):
        if section in document:
            document[section] = dict(sorted(document[section].items()))
    for section, members in document.get("components", {}).items():
        document["components"][section] = dict(sorted(members.items()))
    out = StringIO(initial_value="", newline="\n")
    yaml.dump(document, out, sort_keys=False)
    return out.getvalue()


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi")):
        print(path)
