"""The edge's memory at rest: start ``python -m tenantry_auth``, wait for ``/readyz``, stay idle,
read ``/proc/<pid>/status``, stop it.

    .venv/bin/python services/auth/bench/rss_at_rest.py            # 3 starts, 10 s idle each
    .venv/bin/python services/auth/bench/rss_at_rest.py --runs 5 --idle 20 --json out.json
    .venv/bin/python services/auth/bench/rss_at_rest.py --env MALLOC_ARENA_MAX=2
    .venv/bin/python services/auth/bench/rss_at_rest.py --token-requests 40   # then idle

Everything it uses is its own: a private Tansu broker (memory storage, every topic created), a
fresh database on the local Postgres (migrated first, as a deployed edge finds it, and dropped
at the end), the local Redis under a private reply-lease namespace. Each run is a new process;
the median VmRSS of the runs is the figure. ``--token-requests N`` first sends N client
credentials grants (4 at a time: each verifies an argon2id hash in a worker thread) and then
stays idle, to see what the edge keeps after them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import ensure_topics
from tenantry_common.topics import all_topics_with_dlqs

ROOT = Path(__file__).resolve().parents[3]
LOG_DIR = ROOT / "var" / "log" / "bench"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
OPERATOR_SECRET = "bench-operator-secret-0123456789"  # noqa: S105 (a bench-only secret)


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in KiB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0])
    return out


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:  # noqa: S310 (http)
            return int(resp.status) == 200
    except OSError:
        return False


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def edge_env(bootstrap: str, dsn: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    namespace = f"tenantry:bench:{uuid.uuid4().hex[:8]}:reply-partition"
    return (
        os.environ
        | {
            "TENANTRY_ENVIRONMENT": "local",
            "TENANTRY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TENANTRY_POSTGRES_DSN": dsn,
            "TENANTRY_REDIS_URL": "redis://127.0.0.1:6379/0",
            "TENANTRY_REPLY_LEASE_NAMESPACE": namespace,
            "TENANTRY_BOOTSTRAP_OPERATOR_SECRET": OPERATOR_SECRET,
            "TENANTRY_HTTP_PORT": str(port),
            "TENANTRY_LOG_LEVEL": "WARNING",
        }
        | extra
    )


def token_request(url: str) -> None:
    form = {"grant_type": "client_credentials", "client_id": "operator"}
    body = urllib.parse.urlencode(form | {"client_secret": OPERATOR_SECRET}).encode()
    request = urllib.request.Request(f"{url}/v1/oauth/token", data=body, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (http)
        assert resp.status == 200


def one_run(
    env: dict[str, str], port: int, idle_s: float, log_path: Path, token_requests: int = 0
) -> dict[str, float]:
    """Start the edge, wait until ready, (send token requests,) stay idle, read its memory."""
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry_auth"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        while not ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the edge exited with {proc.returncode}; see {log_path}")
            if time.monotonic() - started > 120:
                raise TimeoutError(f"the edge was not ready in 120 s; see {log_path}")
            time.sleep(0.1)
        ready_s = time.monotonic() - started
        if token_requests:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(token_request, [url] * token_requests))
        time.sleep(idle_s)
        kib = status_kib(proc.pid)
    finally:
        stop_process(proc, 30)
    return {
        "ready_s": round(ready_s, 2),
        **{f"{k}_mib": round(v / 1024, 1) for k, v in kib.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="edge starts (median reported)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle after /readyz")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the edge")
    parser.add_argument("--token-requests", type=int, default=0, help="sent before the idle")
    parser.add_argument("--label", default="", help="a name for this configuration")
    parser.add_argument("--json", type=Path, help="append the result (one JSON line) here")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kafka_port = free_port()
    broker = start_tansu(kafka_port, LOG_DIR / f"rss-tansu-{kafka_port}.log")
    bootstrap = f"127.0.0.1:{kafka_port}"
    database = f"tenantry_bench_auth_{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    try:
        asyncio.run(ensure_topics(bootstrap, all_topics_with_dlqs()))
        asyncio.run(create_database(database))
        # Migrated (and the first signing key made) by a first start that is not measured:
        # a deployed edge finds its database at the newest revision.
        port = free_port()
        log_path = LOG_DIR / f"rss-edge-{port}.log"
        one_run(edge_env(bootstrap, dsn, port, extra), port, 0.0, log_path)
        runs = []
        for _ in range(args.runs):
            port = free_port()
            env = edge_env(bootstrap, dsn, port, extra)
            runs.append(one_run(env, port, args.idle, log_path, args.token_requests))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        stop_process(broker)
        asyncio.run(drop_database(database))
    result = {
        "label": args.label,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": load_average(),
        "idle_s": args.idle,
        "token_requests": args.token_requests,
        "env": extra,
        "median_VmRSS_mib": statistics.median(r["VmRSS_mib"] for r in runs),
        "runs": runs,
    }
    print(json.dumps(result), flush=True)
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
