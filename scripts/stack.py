"""The local stack: ``up`` starts the broker, the model server and every service; ``down`` stops
all of it; ``status`` shows what runs. Postgres and Redis are the machine's own (started here
only if they are down and this machine knows how).

Logs: ``var/log/<name>.log``. Pids: ``var/run/<name>.pid``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tenantry_common.db import ensure_database
from tenantry_common.localstack import (
    port_open,
    start_model_server,
    start_tansu,
    wait_for,
)
from tenantry_common.messaging import ensure_topics
from tenantry_common.topics import all_topics_with_dlqs

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
LOGS = VAR / "log"
RUN = VAR / "run"

KAFKA_PORT = int(os.environ.get("TENANTRY_LOCAL_KAFKA_PORT", "9092"))
MODEL_PORT = int(os.environ.get("TENANTRY_LOCAL_MODEL_PORT", "8081"))
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"

#: (name, module, port): consumers first, the edge last.
SERVICES = [
    ("audit", "tenantry_audit", 8004),
    ("metering", "tenantry_metering", 8003),
    ("retrieval", "tenantry_retrieval", 8001),
    ("inference", "tenantry_inference", 8002),
    ("auth", "tenantry_auth", 8000),
]
DATABASES = ["tenantry_auth", "tenantry_metering", "tenantry_audit"]

# How this machine kind starts its own Postgres and Redis when they are down.
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def ensure_backing_services() -> None:
    """Postgres and Redis must answer; try the machine's own start commands once if not."""
    for name, port, command in (
        ("Postgres", 5432, START_POSTGRES),
        ("Redis", 6379, START_REDIS),
    ):
        if port_open(port):
            continue
        say(f"{name} is not reachable on 127.0.0.1:{port}; trying to start it")
        subprocess.run(command, shell=True, check=False)  # noqa: S602 - fixed command
        try:
            wait_for(lambda p=port: port_open(p), 30, name)  # type: ignore[misc]
        except TimeoutError:
            sys.exit(
                f"[stack] {name} is not running on 127.0.0.1:{port} and could not be started.\n"
                f"        Start it (e.g. `{command}`) and run this again."
            )


def pidfile(name: str) -> Path:
    return RUN / f"{name}.pid"


def running(name: str) -> int | None:
    path = pidfile(name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pid


def record(name: str, proc: subprocess.Popen[bytes]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    pidfile(name).write_text(str(proc.pid))


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


def operator_secret() -> str:
    """The local operator's bootstrap secret: made once per checkout, kept in var/ (not in git)."""
    path = VAR / "operator.secret"
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TENANTRY_KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP)
    env.setdefault("TENANTRY_ENVIRONMENT", "local")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def up(args: argparse.Namespace) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    ensure_backing_services()
    for database in DATABASES:
        if asyncio.run(ensure_database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}")):
            say(f"created database {database}")

    if running("kafka") is None:
        if port_open(KAFKA_PORT):
            sys.exit(f"[stack] port {KAFKA_PORT} is taken by something that is not this stack")
        record("kafka", start_tansu(KAFKA_PORT, LOGS / "kafka.log"))
        say(f"Kafka-compatible broker (Tansu) on {BOOTSTRAP}")
    created = asyncio.run(ensure_topics(BOOTSTRAP, all_topics_with_dlqs()))
    if created:
        say(f"created {len(created)} topics")

    if not args.no_model and running("model") is None:
        if port_open(MODEL_PORT):
            sys.exit(f"[stack] port {MODEL_PORT} is taken by something that is not this stack")
        record("model", start_model_server(MODEL_PORT, LOGS / "model.log"))
        say(f"model server (SmolLM2-135M, OpenAI-compatible) on http://127.0.0.1:{MODEL_PORT}/v1")

    env = service_env()
    started: list[tuple[str, int]] = []
    for name, module, port in SERVICES:
        package_dir = ROOT / "services" / name / "src" / module
        if not (package_dir / "__main__.py").exists():
            say(f"{name}: not built yet, skipped")
            continue
        if running(name) is not None:
            continue
        log = (LOGS / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=env
            | {"TENANTRY_HTTP_PORT": str(port)}
            | ({"TENANTRY_BOOTSTRAP_OPERATOR_SECRET": operator_secret()} if name == "auth" else {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        record(name, proc)
        started.append((name, port))
    for name, port in started:
        try:
            wait_for(lambda p=port: ready(p), args.timeout, f"{name} readiness")  # type: ignore[misc]
            say(f"{name} ready on http://127.0.0.1:{port}")
        except (TimeoutError, RuntimeError) as exc:
            sys.exit(f"[stack] {exc}; see var/log/{name}.log")
    say("up. Logs: var/log/*.log; stop with `make down`.")


def _stop(name: str, timeout_s: float) -> None:
    pid = running(name)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    pidfile(name).unlink(missing_ok=True)
    say(f"stopped {name}")


def down(args: argparse.Namespace) -> None:
    for name, _, _ in reversed(SERVICES):
        _stop(name, 25)
    _stop("model", 10)
    _stop("kafka", 10)
    if args.wipe and (VAR / "chroma").exists():
        shutil.rmtree(VAR / "chroma")
        say("removed var/chroma")


def status(_: argparse.Namespace) -> None:
    rows = [("kafka", KAFKA_PORT), ("model", MODEL_PORT)] + [(n, p) for n, _, p in SERVICES]
    for name, port in rows:
        pid = running(name)
        state = f"running (pid {pid})" if pid else "stopped"
        health = ""
        if pid and name not in ("kafka", "model"):
            health = "ready" if ready(port) else "not ready"
        print(f"{name:10} {port:5} {state:22} {health}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--no-model", action="store_true", help="do not start the model server")
    p_up.add_argument("--timeout", type=float, default=180.0)
    p_up.set_defaults(func=up)
    p_down = sub.add_parser("down")
    p_down.add_argument("--wipe", action="store_true", help="also delete local vector data")
    p_down.set_defaults(func=down)
    sub.add_parser("status").set_defaults(func=status)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
