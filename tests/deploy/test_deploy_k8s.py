"""k8s/: every overlay renders, every built-in object validates offline, and the manifests say
what the services need (probes, ports, hardening, scaling caps, isolation, topics)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import tenantry_common.messaging as messaging
import yaml
from deploy_support import (
    CONSUMER_GROUPS,
    ROOT,
    SERVICES,
    by_kind,
    documented_ports,
    kubectl,
    load_module,
    pod_containers,
    pod_spec,
    render_lite,
    render_overlay,
    render_with_kubectl,
    service_settings,
    unknown_settings,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from tenantry_common.health import health_router
from tenantry_common.metrics import metrics_router
from tenantry_common.settings import PROMPT_MARKUP_STOPS, CommonSettings
from tenantry_common.topics import CHAT_RESPONSES, all_topics_with_dlqs

pytestmark = pytest.mark.unit

OVERLAYS = ("dev", "prod")
NAMESPACES = {"dev": "tenantry-dev", "prod": "tenantry"}
KUBERNETES_VERSION = "1.31.0"
#: Custom resources: no bundled schema, so their structure is checked by the tests below.
CRD_KINDS = {
    "Kafka",
    "KafkaNodePool",
    "KafkaTopic",
    "ScaledObject",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}
WORKLOADS = (*SERVICES, "model-server")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_overlay(request.param)


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = by_kind(objects, "Deployment")[name]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(main, dict)
    return main


def named_port(main: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in main["ports"] if p["name"] == name))


def config_env(objects: list[dict[str, Any]], main: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom), then its env entries."""
    maps = by_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in main.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
    for entry in main.get("env", []):
        env[entry["name"]] = entry.get("value", "<from secret>")
    return env


def test_overlays_render_with_kubectl_kustomize() -> None:
    if kubectl() is None:
        pytest.skip("kubectl is not installed; the other tests render with render_lite")
    for name in OVERLAYS:
        objects = render_with_kubectl(ROOT / "k8s" / "overlays" / name)
        assert len(objects) > 40


@pytest.mark.parametrize("name", OVERLAYS)
def test_render_lite_agrees_with_kubectl(name: str) -> None:
    if kubectl() is None:
        pytest.skip("kubectl is not installed: nothing to compare render_lite with")
    overlay = ROOT / "k8s" / "overlays" / name

    def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    assert keyed(render_lite(overlay)) == keyed(render_with_kubectl(overlay))


def test_every_builtin_object_validates_against_the_kubernetes_schema(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    validated = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        validated += 1
    assert validated >= 30
    unknown = (
        {o["kind"] for o in objects}
        - CRD_KINDS
        - {
            "Namespace",
            "ConfigMap",
            "Deployment",
            "StatefulSet",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
        }
    )
    assert unknown == set(), f"kinds nobody checks: {unknown}"


def test_every_object_lands_in_the_overlay_namespace(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = overlay
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACES[name]
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert obj["metadata"]["namespace"] == NAMESPACES[name]


@pytest.mark.parametrize("service", SERVICES)
def test_probes_use_the_services_health_endpoints_and_documented_port(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    _, objects = overlay
    main = container(objects, service)
    port = named_port(main, "http")
    assert port == documented_ports()[service]
    env = config_env(objects, main)
    assert env["TENANTRY_HTTP_PORT"] == str(port)
    assert env["TENANTRY_HTTP_HOST"] == "0.0.0.0"
    settings = service_settings(service)
    if settings is not None:
        assert settings.model_fields["http_port"].default == port
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service_object = by_kind(objects, "Service")[service]
    (service_port,) = service_object["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] == "http"


def test_probe_and_scrape_paths_are_served_by_the_shared_routers() -> None:
    app = FastAPI()
    app.include_router(health_router({}))
    app.include_router(metrics_router(CollectorRegistry()))
    with TestClient(app) as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
    monitor = next(yaml.safe_load_all((ROOT / "k8s/base/monitoring.yaml").read_text()))
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["endpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }


def test_model_server_probes_the_openai_models_endpoint(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    main = container(objects, "model-server")
    assert named_port(main, "http") == documented_ports()["model-server"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    catalogue = CommonSettings.model_validate_json(
        '{"models": '
        + by_kind(objects, "ConfigMap")["tenantry-common"]["data"]["TENANTRY_MODELS"]
        + "}"
    ).models
    assert (
        catalogue["smollm2-135m"].base_url == f"http://model-server:{named_port(main, 'http')}/v1"
    )
    assert catalogue["smollm2-135m"].stop == list(PROMPT_MARKUP_STOPS)


@pytest.mark.parametrize("workload", [*WORKLOADS, "chroma"])
def test_pods_are_hardened_and_sized(
    overlay: tuple[str, list[dict[str, Any]]], workload: str
) -> None:
    _, objects = overlay
    obj = {**by_kind(objects, "Deployment"), **by_kind(objects, "StatefulSet")}[workload]
    spec = pod_spec(obj)
    assert spec is not None
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for main in pod_containers(obj):
        context = main["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert mounts.get("/tmp") in tmp_volumes, "a writable /tmp (emptyDir) is needed"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(main["resources"][kind])
        assert ":" in main["image"]
        assert not main["image"].endswith(":latest")


@pytest.mark.parametrize("service", SERVICES)
def test_termination_grace_outlasts_in_flight_work(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    _, objects = overlay
    spec = pod_spec(by_kind(objects, "Deployment")[service])
    assert spec is not None
    main = container(objects, service)
    graceful = float(config_env(objects, main)["TENANTRY_GRACEFUL_TIMEOUT_S"])
    assert graceful >= float(CommonSettings.model_fields["graceful_timeout_s"].default)
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    sleep_s = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] >= sleep_s + graceful + 10


@pytest.mark.parametrize("workload", [*WORKLOADS, "chroma"])
def test_every_workload_has_a_disruption_budget(
    overlay: tuple[str, list[dict[str, Any]]], workload: str
) -> None:
    _, objects = overlay
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert budgets[workload]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": workload
    }
    assert budgets[workload]["spec"]["maxUnavailable"] >= 1, "0 would block every node drain"


def test_edge_scales_on_cpu_up_to_its_reply_partitions(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == {"auth"}
    hpa = hpas["auth"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auth"}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    # Each edge replica holds one partition of chat.responses.v1 for its answers.
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= CHAT_RESPONSES.partitions


@pytest.mark.parametrize("service", sorted(CONSUMER_GROUPS))
def test_consumers_scale_on_group_lag_capped_at_partitions(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    name, objects = overlay
    scaled = by_kind(objects, "ScaledObject")
    assert set(scaled) == set(CONSUMER_GROUPS)
    spec = scaled[service]["spec"]
    assert scaled[service]["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"]["name"] == service
    assert "replicas" not in by_kind(objects, "Deployment")[service]["spec"]
    triggers = [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in spec["triggers"]]
    assert triggers == CONSUMER_GROUPS[service]
    partitions = {t.name: t.partitions for t in all_topics_with_dlqs()}
    # Replicas beyond the partitions would be idle members of the group.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= max(partitions[topic] for _, topic in triggers)
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        assert metadata["allowIdleConsumers"] == "false"
        # KEDA's operator lives in another namespace: the address must name this one.
        assert (
            metadata["bootstrapServers"] == f"tenantry-kafka-bootstrap.{NAMESPACES[name]}.svc:9092"
        )
        assert int(metadata["lagThreshold"]) > 0


@pytest.mark.parametrize("service", sorted(CONSUMER_GROUPS))
def test_scaled_group_ids_are_the_ones_the_service_subscribes_with(service: str) -> None:
    source = "\n".join(
        path.read_text() for path in (ROOT / "services" / service / "src").rglob("*.py")
    )
    for group, _ in CONSUMER_GROUPS[service]:
        if f'"{group}"' not in source:
            pytest.fail(f"{service} has no consumer group {group!r} in its source")


def test_only_the_edge_takes_ingress(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    policies = by_kind(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{name}: a rule without `from` admits everyone"
            outside = [p for p in peers if "namespaceSelector" in p or "ipBlock" in p]
            if not outside:
                continue
            selector = policy["spec"]["podSelector"]
            namespaces = {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for p in outside
            }
            if selector == {"matchLabels": {"app.kubernetes.io/name": "auth"}}:
                assert namespaces == {"ingress-nginx"}
            else:
                # Anything else from outside: only Prometheus, only the metrics port.
                assert namespaces == {"monitoring"}, name
                assert rule["ports"] == [{"port": "http"}]
    for service in by_kind(objects, "Service").values():
        assert service["spec"]["type"] == "ClusterIP"
    for ingress in by_kind(objects, "Ingress").values():
        backends = {
            path["backend"]["service"]["name"]
            for rule in ingress["spec"]["rules"]
            for path in rule["http"]["paths"]
        }
        assert backends == {"auth"}


def test_secrets_are_referenced_never_shipped(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    assert not [o for o in objects if o["kind"] == "Secret"]
    operations = (ROOT / "docs" / "operations.md").read_text()
    referenced: set[str] = set()
    for obj in objects:
        for main in pod_containers(obj):
            for source in main.get("envFrom", []):
                if "secretRef" in source:
                    referenced.add(source["secretRef"]["name"])
            for entry in main.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                assert not re.search(r"(KEY|SECRET|PASSWORD|DSN|TOKEN)", entry["name"]) or (
                    "valueFrom" in entry
                ), f"{entry['name']} must come from a Secret"
    for config in by_kind(objects, "ConfigMap").values():
        for key in config["data"]:
            assert not re.search(r"(KEY|SECRET|PASSWORD|DSN|TOKEN)$", key), key
    assert referenced >= {"tenantry-redis", "tenantry-auth-db", "tenantry-auth-secrets"}
    for name in referenced:
        assert f"`{name}`" in operations, f"docs/operations.md does not say how to create {name}"


@pytest.mark.parametrize("service", SERVICES)
def test_configmap_names_are_settings_the_service_reads(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    settings = service_settings(service)
    if settings is None:
        pytest.skip(f"tenantry_{service}.config is not written yet")
    _, objects = overlay
    env = config_env(objects, container(objects, service))
    assert unknown_settings(list(env), settings) == []
    assert env["TENANTRY_ENVIRONMENT"] in ("local", "test", "production")


@pytest.mark.parametrize("service", SERVICES)
def test_consumers_long_poll_on_apache_kafka(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    """The 3 ms fetch wait is for Tansu, which answers a fetch only at its deadline; Apache
    Kafka answers as soon as a record arrives, so there a short wait only burns idle polls."""
    _, objects = overlay
    env = config_env(objects, container(objects, service))
    default = CommonSettings.model_fields["kafka_fetch_max_wait_ms"].default
    assert int(env.get("TENANTRY_KAFKA_FETCH_MAX_WAIT_MS", default)) >= 500


def test_kafka_topics_file_is_generated_from_topics_py() -> None:
    generator = load_module(ROOT / "deploy" / "gen_k8s_topics.py", "gen_k8s_topics")
    assert (ROOT / "k8s/base/kafka-topics.yaml").read_text() == generator.render(), (
        "k8s/base/kafka-topics.yaml is stale: run .venv/bin/python deploy/gen_k8s_topics.py"
    )


def test_kafka_topics_match_topics_py(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    rendered = {o["spec"]["topicName"]: o for o in objects if o["kind"] == "KafkaTopic"}
    declared = {t.name: t for t in all_topics_with_dlqs()}
    assert set(rendered) == set(declared)
    for name, spec in declared.items():
        topic = rendered[name]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "tenantry"
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["replicas"] == 3
        config = topic["spec"]["config"]
        assert config["min.insync.replicas"] == "2"
        for key, value in spec.config.items():
            assert config[key] == value
    assert rendered["tenants.config.v1"]["spec"]["config"]["cleanup.policy"] == "compact"
    assert rendered["usage.daily.v1"]["spec"]["config"]["cleanup.policy"] == "compact"
    for retained in ("audit.v1", "usage.v1"):
        assert int(rendered[retained]["spec"]["config"]["retention.ms"]) > 0


def test_kafka_cluster_is_kraft_with_replication_3_and_min_isr_2(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    kafka = by_kind(objects, "Kafka")["tenantry"]
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/node-pools": "enabled",
        "strimzi.io/kraft": "enabled",
    }
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["auto.create.topics.enable"] is False
    assert "zookeeper" not in kafka["spec"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    common = by_kind(objects, "ConfigMap")["tenantry-common"]["data"]
    assert (
        common["TENANTRY_KAFKA_BOOTSTRAP_SERVERS"] == f"tenantry-kafka-bootstrap:{listener['port']}"
    )
    (pool,) = by_kind(objects, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == "tenantry"
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["spec"]["replicas"] >= 3


def test_alerts_use_metrics_that_exist(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    (rule_set,) = by_kind(objects, "PrometheusRule").values()
    rules = [r for group in rule_set["spec"]["groups"] for r in group["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "TenantryDeadLettersGrowing",
        "TenantryConsumerLagHigh",
        "TenantryNotReady",
        "TenantryBudgetExhaustionsSurge",
    } <= names
    # The services' own metrics must be declared somewhere in the code (an alert on a name
    # nobody exports never fires); kafka_* and kube_* come from the exporters.
    exported = "\n".join(
        path.read_text()
        for tree in ("libs/common/src", "services")
        for path in (ROOT / tree).rglob("*.py")
    )
    for rule in rules:
        for metric in re.findall(r"\b(tenantry_[a-z_]+)\b", rule["expr"]):
            assert f'"{metric}"' in exported, f"{rule['alert']}: nobody exports {metric}"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
    operations = (ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert name in operations, f"docs/operations.md does not explain {name}"
    assert hasattr(messaging, "ConsumerMetrics")
    # Consumer lag comes from Strimzi's Kafka Exporter, which the cluster enables.
    assert "kafkaExporter" in by_kind(objects, "Kafka")["tenantry"]["spec"]
