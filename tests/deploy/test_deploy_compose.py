"""docker-compose.yml: valid Compose, KRaft Kafka, health-gated order, only the edge published."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import tenantry_common.messaging as messaging
import tenantry_common.topics as topics
import yaml
from deploy_support import (
    ROOT,
    SERVICES,
    documented_ports,
    duration_s,
    service_settings,
    unknown_settings,
)
from tenantry_common.settings import PROMPT_MARKUP_STOPS, CommonSettings

pytestmark = pytest.mark.unit

COMPOSE_FILE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def test_compose_file_validates_offline_with_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_only_the_edge_is_published_to_the_host(compose: dict[str, Any]) -> None:
    published = {name for name, svc in compose["services"].items() if svc.get("ports")}
    assert published == {"auth"}
    (mapping,) = compose["services"]["auth"]["ports"]
    assert mapping.endswith(f":{documented_ports()['auth']}")


def test_kafka_runs_in_kraft_mode_without_auto_created_topics(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in yaml.safe_dump(kafka).lower()
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


def test_the_stack_has_every_store_and_the_model_server(compose: dict[str, Any]) -> None:
    names = set(compose["services"])
    assert {"kafka", "topics", "postgres", "redis", "chroma", "model-server", *SERVICES} <= names
    assert compose["services"]["chroma"]["image"].startswith("chromadb/chroma:")
    model = compose["services"]["model-server"]
    assert model["build"]["dockerfile"] == "deploy/model-server.Dockerfile"


def test_topics_are_created_from_topics_py_before_any_service(compose: dict[str, Any]) -> None:
    job = compose["services"]["topics"]
    script = " ".join(job["entrypoint"])
    # The names the one-shot job calls must exist in libs/common.
    assert "ensure_topics" in script
    assert hasattr(messaging, "ensure_topics")
    assert "all_topics_with_dlqs" in script
    assert hasattr(topics, "all_topics_with_dlqs")
    assert job["depends_on"]["kafka"]["condition"] == "service_healthy"
    for service in SERVICES:
        condition = compose["services"][service]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully"


def test_start_order_is_gated_on_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dependency, rule in (svc.get("depends_on") or {}).items():
            assert isinstance(rule, dict), f"{name} → {dependency}: no condition"
            if rule["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} has no healthcheck"
    edge = services["auth"]["depends_on"]
    for consumer in ("retrieval", "inference", "metering", "audit"):
        assert edge[consumer]["condition"] == "service_healthy"
    assert services["inference"]["depends_on"]["model-server"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", SERVICES)
def test_service_builds_from_the_one_dockerfile_and_checks_readiness(
    compose: dict[str, Any], service: str
) -> None:
    svc = compose["services"][service]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert svc["build"]["context"] == "."
    assert svc["build"]["args"]["SERVICE"] == service
    assert svc["environment"]["TENANTRY_HTTP_PORT"] == str(documented_ports()[service])
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py", "/readyz"]
    assert svc["read_only"] is True
    assert "/tmp" in svc["tmpfs"]
    assert svc["cap_drop"] == ["ALL"]


@pytest.mark.parametrize("service", SERVICES)
def test_stop_grace_period_covers_the_graceful_timeout(
    compose: dict[str, Any], service: str
) -> None:
    svc = compose["services"][service]
    timeout = float(svc["environment"].get("TENANTRY_GRACEFUL_TIMEOUT_S", 0)) or float(
        CommonSettings.model_fields["graceful_timeout_s"].default
    )
    assert duration_s(svc["stop_grace_period"]) >= timeout + 5


@pytest.mark.parametrize("service", SERVICES)
def test_consumers_long_poll_on_apache_kafka(compose: dict[str, Any], service: str) -> None:
    """Compose runs Apache Kafka, whose fetches answer when a record arrives: the 3 ms wait
    that Tansu needs would only burn idle polls there."""
    env = compose["services"][service]["environment"]
    default = CommonSettings.model_fields["kafka_fetch_max_wait_ms"].default
    assert int(env.get("TENANTRY_KAFKA_FETCH_MAX_WAIT_MS", default)) >= 500


@pytest.mark.parametrize("service", SERVICES)
def test_compose_environment_names_are_settings_the_service_reads(
    compose: dict[str, Any], service: str
) -> None:
    settings = service_settings(service)
    if settings is None:
        pytest.skip(f"tenantry_{service}.config is not written yet")
    env = compose["services"][service]["environment"]
    assert unknown_settings(list(env), settings) == []
    # And the values parse: the catalogue JSON, ports, timeouts.
    values = {k: str(v) for k, v in env.items() if k.startswith("TENANTRY_")}
    models = CommonSettings.model_validate_json(
        '{"models": ' + values["TENANTRY_MODELS"] + "}"
    ).models
    assert "smollm2-135m" in models
    assert models["smollm2-135m"].base_url == "http://model-server:8081/v1"
    assert models["smollm2-135m"].stop == list(PROMPT_MARKUP_STOPS)
