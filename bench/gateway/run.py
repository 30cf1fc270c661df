"""Gateway comparison: Tenantry's edge (gateway mode) vs LiteLLM's proxy vs Portkey's gateway.

All three forward OpenAI-compatible chat completions to the same instant server (nginx answering
from its config), loaded by wrk (1 thread) with the same body, rotating one bearer token per
tenant, at the same connection counts, for a bounded time per point. Results go to
``bench/gateway/results/<UTC start>.{json,md}`` and ``latest.{json,md}``.

Before the first run: ``bash bench/gateway/setup.sh`` (nginx, wrk, LiteLLM's venv, Portkey).
With ``--fresh-stack`` (how the README's figures are taken) the driver starts the local stack
with the bench's model catalogue before each Tenantry point (onboarding again: the local broker
slows down as it fills) and stops it after, so that the peers run without it; it is left
stopped. Without it, start Tenantry first::

    eval "$(.venv/bin/python bench/gateway/run.py --print-stack-env)" && make up

then ``.venv/bin/python bench/gateway/run.py``. Without a reachable edge the Tenantry target
is recorded as pending and the peers are measured anyway. Each point records the CPU the other
targets' processes used beside it, and the CPU per answered request of each process that served
it (``cpu_ms_per_request``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import instant  # noqa: E402
import peers  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import tenantry  # noqa: E402
import wrk  # noqa: E402
import yardstick  # noqa: E402

ROOT = HERE.parent.parent
VAR = ROOT / "var" / "bench"
RESULTS = HERE / "results"

# Fixed ports: the Tenantry stack's catalogue names the instant server's, so it must not move.
INSTANT_PORT = 18090
LITELLM_PORT = 18091
PORTKEY_PORT = 18092
#: Every target's model: a whole completion, or SSE for an ``Accept: text/event-stream``.
INSTANT_BASE_URL = f"http://127.0.0.1:{INSTANT_PORT}/v1"

TARGETS = ("nginx", "litellm", "portkey", "tenantry")
TENANTRY_SERVICES = ("auth", "retrieval", "inference", "metering", "audit")


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def chat_body() -> bytes:
    """The one request body every target gets (a short question, a small answer cap)."""
    return json.dumps(
        {
            "model": instant.MODEL,
            "messages": [
                {"role": "user", "content": "What is the refund policy for annual plans?"}
            ],
            "max_tokens": 64,
            "temperature": 0.2,
        }
    ).encode()


def check_installed() -> None:
    """Refuse to start without the tools setup.sh installs."""
    missing = [tool for tool in ("nginx", "wrk", "node") if shutil.which(tool) is None]
    if not (VAR / "litellm-venv" / "bin" / "litellm").exists():
        missing.append("LiteLLM venv")
    if not (VAR / "portkey" / "node_modules" / "@portkey-ai" / "gateway").exists():
        missing.append("Portkey gateway")
    if missing:
        sys.exit(f"[bench] missing: {', '.join(missing)}; run `bash bench/gateway/setup.sh`")


def preflight(*, url: str, headers: dict[str, str], tokens: list[str]) -> None:
    """A few real requests through the target must return a completion, before any load."""
    for token in tokens[:3]:
        status, raw = procs.http_status(
            url,
            method="POST",
            body=chat_body(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            | headers,
            timeout_s=30,
        )
        if status != 200 or b'"choices"' not in raw:
            raise RuntimeError(f"{url} answered {status}: {raw[:300]!r}")


def stack_pid(name: str) -> int | None:
    """The pid `make up` recorded for a process of the local stack (var/run/<name>.pid), if any;
    scripts/stack.py starts each in a process group of its own."""
    try:
        return int((ROOT / "var" / "run" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def tenantry_cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far by each process of the running local stack: its services and
    its broker (``kafka``)."""
    out: dict[str, float] = {}
    for name in (*TENANTRY_SERVICES, "kafka"):
        pid = stack_pid(name)
        if pid is not None:
            out[name] = procs.group_cpu_s(pid)
    return out


def tenantry_cpu_s() -> float:
    """CPU seconds used so far by the running local stack: its services and its broker."""
    return sum(tenantry_cpu_by_process().values(), 0.0)


def tenantry_rss_mb() -> dict[str, float]:
    """RSS of each service `make up` started."""
    out: dict[str, float] = {}
    for name in TENANTRY_SERVICES:
        pid = stack_pid(name)
        if pid is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = round(int(line.split()[1]) / 1024, 1)
    return out


def _stack(*command: str, check: bool) -> None:
    tenantry.run_stack(*command, instant_base_url=INSTANT_BASE_URL, check=check)


class Bench:
    """One run: the servers it started, the token files and the figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = VAR / "run"
        self.work.mkdir(parents=True, exist_ok=True)
        self.body_file = self.work / "body.json"
        self.body_file.write_bytes(chat_body())
        self.started: list[procs.Proc] = []
        self.endpoints: dict[str, tuple[str, dict[str, str], Path]] = {}
        self.servers: dict[str, procs.Proc] = {}
        self.pending: dict[str, str] = {}
        self.points: dict[str, dict[int, dict[str, Any]]] = {}
        self.raw: dict[str, dict[int, str]] = {}

    def _tokens_file(self, name: str, tokens: list[str]) -> Path:
        path = self.work / f"tokens-{name}.txt"
        path.write_text("\n".join(tokens) + "\n")
        path.chmod(0o600)
        return path

    def _start(
        self, name: str, cmd: list[str], env: dict[str, str | None] | None = None
    ) -> procs.Proc:
        proc = procs.start(name=name, cmd=cmd, env=env, log_dir=VAR / "logs")
        self.started.append(proc)
        self.servers[name] = proc
        return proc

    def start_instant(self) -> None:
        """nginx on the fixed port; refuse a port someone else holds."""
        if not procs.port_free(INSTANT_PORT):
            sys.exit(f"[bench] port {INSTANT_PORT} is taken; the catalogue needs it for nginx")
        cmd = instant.prepare(
            prefix=VAR / "nginx", port=INSTANT_PORT, workers=self.args.nginx_workers
        )
        proc = self._start("nginx", cmd)
        procs.wait_until(
            lambda: procs.http_status(f"http://127.0.0.1:{INSTANT_PORT}/healthz")[0] == 200,
            proc=proc,
            timeout_s=15,
            what="nginx",
        )
        tokens = [f"sk-tenant-{i:03d}" for i in range(self.args.tenants)]
        self.endpoints["nginx"] = (
            f"{INSTANT_BASE_URL}/chat/completions",
            {},
            self._tokens_file("nginx", tokens),
        )

    def start_litellm(self) -> None:
        """LiteLLM's proxy: no DB, so only its master key authenticates (one key for all)."""
        launch = peers.litellm_launch(
            venv=VAR / "litellm-venv",
            config_dir=VAR / "litellm",
            port=LITELLM_PORT,
            upstream_base_url=INSTANT_BASE_URL,
            model=instant.MODEL,
            workers=self.args.litellm_workers,
        )
        proc = self._start("litellm", launch.cmd, launch.env)
        procs.wait_until(
            lambda: (
                procs.http_status(f"http://127.0.0.1:{LITELLM_PORT}{launch.ready_path}")[0] == 200
            ),
            proc=proc,
            timeout_s=240,
            what="LiteLLM",
        )
        tokens = [peers.LITELLM_MASTER_KEY] * self.args.tenants
        self.endpoints["litellm"] = (
            f"http://127.0.0.1:{LITELLM_PORT}/v1/chat/completions",
            launch.headers,
            self._tokens_file("litellm", tokens),
        )

    def start_portkey(self) -> None:
        """Portkey's gateway: it forwards each tenant's bearer token to the upstream unchecked."""
        launch = peers.portkey_launch(
            install_dir=VAR / "portkey", port=PORTKEY_PORT, upstream_base_url=INSTANT_BASE_URL
        )
        proc = self._start("portkey", launch.cmd, launch.env)
        procs.wait_until(
            lambda: procs.http_status(f"http://127.0.0.1:{PORTKEY_PORT}{launch.ready_path}")[0] > 0,
            proc=proc,
            timeout_s=60,
            what="Portkey",
        )
        tokens = [f"sk-tenant-{i:03d}" for i in range(self.args.tenants)]
        self.endpoints["portkey"] = (
            f"http://127.0.0.1:{PORTKEY_PORT}/v1/chat/completions",
            launch.headers,
            self._tokens_file("portkey", tokens),
        )

    def prepare_tenantry(self) -> None:
        """Onboard the tenants in gateway mode on the running stack, or mark Tenantry pending."""
        edge = self.args.edge_url.rstrip("/")
        if procs.http_status(f"{edge}/readyz")[0] != 200:
            self.pending["tenantry"] = f"edge not ready at {edge} (start the stack: see README)"
            return
        try:
            tokens = tenantry.prepare_tenants(
                edge_url=edge,
                # Read when onboarding, not at start: on a fresh clone the first
                # `--fresh-stack` start is what creates var/operator.secret.
                operator_secret=self.args.operator_secret or operator_secret(),
                count=self.args.tenants,
                state_file=VAR / "tenantry-tenants.json",
                broker_started_at=_mtime(ROOT / "var" / "run" / "kafka.pid"),
                # Letters only: a long digit run in a tenant's name (which its system prompt
                # carries) can pass the Luhn check and be blocked as a card number.
                run_label="".join(secrets.choice(string.ascii_lowercase) for _ in range(6)),
            )
        except (tenantry.EdgeRefused, TimeoutError, KeyError) as exc:
            self.pending["tenantry"] = f"onboarding failed: {exc}"
            return
        self.endpoints["tenantry"] = (
            f"{edge}{tenantry.CHAT_COMPLETIONS_PATH}",
            {},
            self._tokens_file("tenantry", tokens),
        )

    def ready_targets(self) -> list[str]:
        """Targets that answered a preflight request; the others are recorded as pending."""
        ready = []
        for name in self.args.targets:
            if name not in self.endpoints:
                continue
            url, headers, tokens_file = self.endpoints[name]
            try:
                preflight(url=url, headers=headers, tokens=tokens_file.read_text().split())
            except RuntimeError as exc:
                self.pending[name] = f"preflight failed: {exc}"
                continue
            ready.append(name)
        return ready

    def load(self, name: str, connections: int, duration_s: int) -> tuple[wrk.WrkResult, str]:
        url, headers, tokens_file = self.endpoints[name]
        outcome: tuple[wrk.WrkResult, str] = wrk.run(
            url=url,
            connections=connections,
            duration_s=duration_s,
            tokens_file=tokens_file,
            body_file=self.body_file,
            headers=headers,
            threads=1,
        )
        return outcome

    def restart_tenantry(self, connections: int | None) -> None:
        """A fresh local stack (``--fresh-stack``): down, up with the bench catalogue, tenants
        onboarded again, warmed at this point's connections (when given).

        Tansu's memory storage slows down as its log grows: at ≈ 300 req/s its CPU per request
        went 0.8, 1.5, 2.3, 3.9, 5.9 ms over five 20 s points in a row (2026-12-04), so a point's
        figure depended on how many requests came before it. Apache Kafka does not; the fresh
        broker measures Tenantry rather than the local broker's age.
        """
        log("restarting the Tenantry stack (fresh broker)")
        self.stop_tenantry()
        _stack("up", "--no-model", check=True)
        self.endpoints.pop("tenantry", None)
        self.prepare_tenantry()
        if "tenantry" not in self.endpoints:
            raise RuntimeError(f"Tenantry after a restart: {self.pending.get('tenantry')}")
        if connections is not None:
            log(f"warming tenantry ({self.args.warmup}s at {connections} connections)")
            self.load("tenantry", connections, self.args.warmup)

    def stop_tenantry(self) -> None:
        """Stop the local stack (``--fresh-stack``), so that the peers' points do not share the
        machine with its idle consumers: on Tansu they poll every 3 ms, ≈ 0.6 of a core at rest
        with the broker (2026-12-05), which the peers' figures paid before this was done."""
        _stack("down", check=False)

    def others_cpu_s(self, name: str) -> float:
        """CPU seconds used so far by every target's processes but ``name``'s (nginx, the
        upstream of all, excluded): what ran beside a point, measured across it."""
        others = [proc for key, proc in self.servers.items() if key not in (name, "nginx")]
        total = sum((proc.cpu_s() for proc in others), 0.0)
        if name != "tenantry":
            total += tenantry_cpu_s()
        return total

    def cpu_by_process(self, name: str) -> dict[str, float]:
        """CPU seconds used so far by the processes that serve ``name``'s requests: its own
        (each Tenantry service and the broker; a peer's process group), the instant server
        upstream of all, and the machine's Redis and Postgres (LiteLLM uses Redis too)."""
        out: dict[str, float] = {}
        if name == "tenantry":
            out |= tenantry_cpu_by_process()
        elif (own := self.servers.get(name)) is not None:
            out[name] = own.cpu_s()
        if name != "nginx" and (upstream := self.servers.get("nginx")) is not None:
            out["nginx"] = upstream.cpu_s()
        out["redis"] = procs.named_cpu_s("redis-server")
        out["postgres"] = procs.named_cpu_s("postgres")
        return out

    def measure(self, targets: list[str]) -> None:
        """Warm each target, then per connection count run every target in turn (interleaved, so
        that background load from the rest of the machine falls on all targets alike)."""
        top = max(self.args.connections)
        for name in targets:
            if name == "tenantry" and self.args.fresh_stack:
                continue  # warmed after each restart
            log(f"warming {name} ({self.args.warmup}s at {top} connections)")
            self.load(name, top, self.args.warmup)
        for connections in self.args.connections:
            for name in targets:
                if name == "tenantry" and self.args.fresh_stack:
                    self.restart_tenantry(connections)
                load_before = round(os.getloadavg()[0], 2)
                speed_before = yardstick.yardstick_ms()
                cpu_before = self.cpu_by_process(name)
                others_before, started = self.others_cpu_s(name), time.monotonic()
                result, raw = self.load(name, connections, self.args.duration)
                others = (self.others_cpu_s(name) - others_before) / (time.monotonic() - started)
                cpu_after = self.cpu_by_process(name)
                speed_after = yardstick.yardstick_ms()
                point = result.as_dict() | {
                    "loadavg_1m_before": load_before,
                    # The machine's speed around the point (yardstick.py; lower is faster).
                    "yardstick_ms": [speed_before, speed_after],
                    "others_cpu_cores": round(others, 3),
                    "cpu_ms_per_request": report.cpu_ms_per_request(
                        cpu_before,
                        cpu_after,
                        answered=result.requests - result.non_2xx,
                        target=name,
                    ),
                }
                proc = self.servers.get(name)
                if proc is not None:
                    point["rss_mb"] = proc.rss_mb()
                elif name == "tenantry":
                    rss = tenantry_rss_mb()
                    point["rss_mb_by_service"] = rss
                    point["rss_mb"] = round(sum(rss.values()), 1) if rss else None
                if name == "tenantry" and self.args.fresh_stack:
                    self.stop_tenantry()
                self.points.setdefault(name, {})[connections] = point
                self.raw.setdefault(name, {})[connections] = raw
                log(
                    f"{name:9} c={connections:<4} ok {result.ok_rps:9.1f} req/s  "
                    f"p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  "
                    f"errors {result.errors}  (load {load_before}, others {others:.2f} cores, "
                    f"yardstick {speed_before} → {speed_after} ms)"
                )

    def write(self, started_at: str) -> Path:
        """results/latest.json and latest.md (the README quotes the table)."""
        meta = {
            "started_at": started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "threads": 1,
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "connections": self.args.connections,
            "tenants": self.args.tenants,
            "cpus": os.cpu_count(),
            "loadavg_before": self.loadavg_before,
            "litellm_workers": self.args.litellm_workers,
            "nginx_workers": self.args.nginx_workers,
            "fresh_stack": self.args.fresh_stack,
            "pending": self.pending,
            "versions": versions(),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        data = {
            "meta": meta,
            "points": self.points,
            "ratios": report.ratios(self.points),
            "wrk_reports": self.raw,
        }
        stamp = started_at.replace(":", "").replace("-", "").removesuffix("+0000")
        text = json.dumps(data, indent=1, default=str) + "\n"
        (RESULTS / f"{stamp}.json").write_text(text)
        (RESULTS / "latest.json").write_text(text)
        table = report.markdown(self.points, meta)
        if self.pending:
            table += "\n" + "\n".join(f"- {k}: pending — {v}" for k, v in self.pending.items())
            table += "\n"
        (RESULTS / f"{stamp}.md").write_text(table)
        (RESULTS / "latest.md").write_text(table)
        return RESULTS / "latest.md"

    def run(self) -> int:
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.loadavg_before = [round(x, 2) for x in os.getloadavg()]
        try:
            self.start_instant()
            if "litellm" in self.args.targets:
                log("starting LiteLLM (it takes a while to import)")
                self.start_litellm()
            if "portkey" in self.args.targets:
                self.start_portkey()
            fresh_tenantry = "tenantry" in self.args.targets and self.args.fresh_stack
            if fresh_tenantry:
                try:
                    self.restart_tenantry(None)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    self.pending.setdefault("tenantry", f"the stack did not start: {exc}")
            elif "tenantry" in self.args.targets:
                self.prepare_tenantry()
            targets = self.ready_targets()
            if fresh_tenantry:
                self.stop_tenantry()  # started again, fresh, before each of its points
            for name, why in self.pending.items():
                log(f"{name}: pending — {why}")
            self.measure(targets)
        finally:
            for proc in reversed(self.started):
                proc.stop()
        path = self.write(started_at)
        print(path.read_text())
        return 0


def versions() -> dict[str, str]:
    """What was measured, for the record."""
    out: dict[str, str] = {}
    site_packages = VAR / "litellm-venv" / "lib"
    for name in ("litellm", "opentelemetry_sdk"):
        for dist_info in site_packages.glob(f"python*/site-packages/{name}-*.dist-info"):
            out[name] = dist_info.name.removeprefix(f"{name}-").removesuffix(".dist-info")
    package = VAR / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    if package.exists():
        out["portkey"] = json.loads(package.read_text())["version"]
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    out["nginx"] = nginx.stderr.strip().removeprefix("nginx version: ")
    return out


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def operator_secret() -> str:
    """The secret `make up` gave the edge's bootstrap operator (scripts/stack.py keeps it in
    var/operator.secret), else the environment's, else empty (onboarding is then refused)."""
    path = ROOT / "var" / "operator.secret"
    if path.exists():
        return path.read_text().strip()
    return os.environ.get("TENANTRY_BOOTSTRAP_OPERATOR_SECRET", "")


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _targets(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets {unknown}; choose from {TARGETS}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=_targets, default=list(TARGETS))
    parser.add_argument("--connections", type=_int_list, default=[10, 50, 100])
    parser.add_argument("--duration", type=int, default=15, help="seconds per point")
    parser.add_argument(
        "--warmup", type=int, default=10, help="seconds per target before measuring"
    )
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--edge-url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--operator-secret",
        default=None,
        help="the edge's bootstrap operator secret (default: var/operator.secret, which "
        "`make up` creates, else $TENANTRY_BOOTSTRAP_OPERATOR_SECRET)",
    )
    parser.add_argument(
        "--fresh-stack",
        action="store_true",
        help="start the local Tenantry stack (scripts/stack.py) afresh before each of its "
        "points and stop it after, so that each starts on an empty broker (Tansu's memory "
        "storage slows as it fills) and the peers' points run without it; it is left stopped",
    )
    parser.add_argument(
        "--print-stack-env",
        action="store_true",
        help="print `export` lines for `make up` (the model catalogue pointing at the instant "
        "server; `make up` makes the operator secret itself)",
    )
    args = parser.parse_args()
    if args.print_stack_env:
        env = tenantry.catalogue_env(instant_base_url=INSTANT_BASE_URL)
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if any(c < 1 for c in args.connections) or args.duration < 1 or args.duration > 300:
        parser.error("connections must be >= 1 and duration within 1..300 s")
    check_installed()
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
