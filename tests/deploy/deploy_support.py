"""Helpers for the deployment tests: the documented ports, Dockerfile parsing, kustomize rendering.

Nothing here needs a running service: everything is read from the repository's files.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from tenantry_common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "retrieval", "inference", "metering", "audit")
MODEL_SERVER_PORT = 8081

#: What a service's ScaledObject must scale on: (consumer group, topic) pairs.
CONSUMER_GROUPS: dict[str, list[tuple[str, str]]] = {
    "retrieval": [
        ("retrieval.questions", "chat.requests.v1"),
        ("retrieval.documents", "documents.v1"),
    ],
    "inference": [("inference.chat", "chat.context.v1")],
    "metering": [("metering.usage", "usage.v1")],
    "audit": [("audit.records", "audit.v1")],
}


def documented_ports() -> dict[str, int]:
    """The port table of docs/services.md, keyed by service name (and `model-server`)."""
    text = (ROOT / "docs" / "services.md").read_text()
    section = text.split("## Ports", 1)[1].split("\n## ", 1)[0]
    ports: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[1].isdigit():
            continue
        process, port = cells[0], int(cells[1])
        if "services/auth" in process:
            ports["auth"] = port
        elif "model server" in process:
            ports["model-server"] = port
        elif process in SERVICES:
            ports[process] = port
    return ports


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script of the repository (deploy/*.py) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def service_settings(service: str) -> type[CommonSettings] | None:
    """The service's Settings class (a CommonSettings subclass in its config.py), if written yet."""
    try:
        module = importlib.import_module(f"tenantry_{service}.config")
    except ImportError:
        return None
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, CommonSettings)
            and value is not CommonSettings
            and value.__module__ == module.__name__
        ):
            return value
    return None


def unknown_settings(env_names: list[str], settings: type[CommonSettings]) -> list[str]:
    """The TENANTRY_* names no field of ``settings`` reads (pydantic-settings ignores them)."""
    fields = set(settings.model_fields)
    unknown = []
    for name in env_names:
        if not name.startswith("TENANTRY_"):
            continue
        field = name.removeprefix("TENANTRY_").lower().split("__", 1)[0]
        if field not in fields:
            unknown.append(name)
    return unknown


# --- Dockerfiles ---------------------------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their stage index (continuation lines joined, comments dropped)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    return instructions


def copy_sources(instruction: Instruction) -> list[str]:
    """The local sources of a COPY (none for COPY --from=...)."""
    words = instruction.args.split()
    if any(w.startswith("--from=") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


# --- kustomize -----------------------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_with_kubectl(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <overlay>`, parsed."""
    binary = kubectl()
    assert binary is not None
    result = subprocess.run(
        [binary, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_lite(directory: Path) -> list[dict[str, Any]]:
    """A small kustomize: resources, namespace, images and JSON6902 patches with a target.

    Only the features k8s/ uses, so the manifests can be checked where kubectl is missing; a
    test compares it with kubectl wherever both exist.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            objects.extend(render_lite(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    known = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
    unsupported = set(kustomization) - known
    assert not unsupported, f"render_lite does not support {unsupported}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if target.get("kind", kind) == kind and target.get("name", name) == name:
                for op in ops:
                    _apply_json_patch(obj, op)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in pod_containers(obj):
                repository, _, _ = container["image"].partition(":")
                if repository == image["name"]:
                    new = image.get("newName", repository)
                    container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def _apply_json_patch(obj: dict[str, Any], op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    value = copy.deepcopy(op.get("value"))
    if op["op"] not in ("add", "replace"):
        raise AssertionError(f"render_lite does not support op {op['op']}")
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif op["op"] == "add":
            parent.insert(int(last), value)
        else:
            parent[int(last)] = value
    else:
        if op["op"] == "replace":
            assert last in parent, f"replace of a missing path {op['path']}"
        parent[last] = value


def render_overlay(name: str) -> list[dict[str, Any]]:
    """The overlay's objects: kubectl's kustomize where installed, else render_lite."""
    overlay = ROOT / "k8s" / "overlays" / name
    return render_with_kubectl(overlay) if kubectl() else render_lite(overlay)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = obj["spec"]["template"]["spec"]
        return spec
    return None


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def duration_s(value: str) -> float:
    """A compose duration ("30s", "1m30s") in seconds."""
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total
