"""Runs the five services as real processes for end-to-end and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tenantry_common.localstack import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """One service: its module, port, environment, and the process while it runs."""

    name: str
    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout_s: float = 180.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        wait_for(self.ready, timeout_s, f"{self.name} readiness (log: {self.log_path})", self.proc)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:  # noqa: S310
                return int(r.status) == 200
        except OSError:
            return False

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:  # noqa: S310
                return int(r.status) == 200
        except OSError:
            return False

    def kill9(self) -> None:
        """SIGKILL: no graceful shutdown, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, *, wait: bool = True) -> None:
        self.kill9()
        self.restarts += 1
        self.start(wait=wait)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class System:
    """The whole system on free ports, sharing one broker, Postgres, Redis and model server."""

    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def edge(self) -> ServiceProcess:
        return self.services["auth"]

    def start(self) -> None:
        # Consumers first, the edge last (it waits for nothing, but its readiness means all are up).
        for name in ("audit", "metering", "retrieval", "inference", "auth"):
            self.services[name].start(wait=False)
        for name in ("audit", "metering", "retrieval", "inference", "auth"):
            self.services[name].wait_ready()

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


def build_system(
    *,
    kafka_bootstrap: str,
    redis_url: str,
    model_base_url: str,
    databases: Mapping[str, str],
    work_dir: Path,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> System:
    """Five service processes wired to the given stores (not started)."""
    ports = {name: free_port() for name in ("auth", "retrieval", "inference", "metering", "audit")}
    edge = f"http://127.0.0.1:{ports['auth']}"
    catalogue = {
        "smollm2-135m": {
            "base_url": model_base_url,
            "served_name": "smollm2-135m",
            "input_price_micros_per_mtok": 50_000,
            "output_price_micros_per_mtok": 100_000,
            "context_window": 2048,
            "response_formats": "json_object_schema",
        },
        # A provider that cannot be reached (nothing listens on port 9), whose catalogue
        # fallback is the local model.
        OFFLINE_MODEL: {
            "base_url": "http://127.0.0.1:9/v1",
            "served_name": "smollm2-135m",
            "input_price_micros_per_mtok": 1_000_000,
            "output_price_micros_per_mtok": 1_000_000,
            "context_window": 2048,
            "fallbacks": ["smollm2-135m"],
        },
        # The local model with a window the catalogue overstates: a long prompt passes the
        # platform's own checks and the model server refuses it (400 context_length_exceeded).
        OVERSTATED_MODEL: {
            "base_url": model_base_url,
            "served_name": "smollm2-135m",
            "input_price_micros_per_mtok": 50_000,
            "output_price_micros_per_mtok": 100_000,
            "context_window": 32_768,
        },
    }
    common = {
        **os.environ,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TENANTRY_REDIS_URL": redis_url,
        "TENANTRY_MODELS": json.dumps(catalogue),
        "TENANTRY_JWKS_URL": f"{edge}/.well-known/jwks.json",
        "TENANTRY_METERING_URL": f"http://127.0.0.1:{ports['metering']}",
        "TENANTRY_AUDIT_URL": f"http://127.0.0.1:{ports['audit']}",
        "TENANTRY_CONSUMER_RETRY_BACKOFF_S": "0.05",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    system = System()
    for name, port in ports.items():
        env = dict(common) | {"TENANTRY_HTTP_PORT": str(port)}
        if name in databases:
            env["TENANTRY_POSTGRES_DSN"] = databases[name]
        env |= dict((extra_env or {}).get(name, {}))
        system.services[name] = ServiceProcess(
            name=name,
            module=f"tenantry_{name}",
            port=port,
            env=env,
            log_path=work_dir / "logs" / f"{name}.log",
        )
    return system


#: A catalogue model whose provider is down; the local model is its fallback.
OFFLINE_MODEL = "offline-provider"
#: The local model, catalogued with a larger window than its server has.
OVERSTATED_MODEL = "smollm2-overstated"


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    """Poll until true (for conditions reached through the system's own APIs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout_s:.0f}s")


def client_token(http: httpx.Client, client_id: str, secret: str) -> str:
    """An access token for a client (the operator's, or a tenant's) from the edge."""
    r = http.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def onboard(http: httpx.Client, operator: str, *, name: str, tier: str) -> tuple[str, str]:
    """A new tenant, onboarded as an operator would and waited for until active:
    (its id, its admin's token)."""
    auth = {"Authorization": f"Bearer {operator}"}
    r = http.post(
        "/v1/tenants",
        json={"name": name, "tier": tier, "admin_contact": "admin@e2e.test"},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    tenant = f"/v1/tenants/{created['tenant_id']}"
    wait_until(
        lambda: http.get(tenant, headers=auth).json()["status"] == "active", 120, f"{name} active"
    )
    return str(created["tenant_id"]), client_token(
        http, created["client_id"], created["client_secret"]
    )
