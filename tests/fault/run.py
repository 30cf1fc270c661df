"""The fault-injection run: steady chat load through the edge while consumer services are
``kill -9``-ed and restarted and Postgres and Redis are restarted; then the invariants.

Used by ``scripts/fault.py`` (prints the report) and ``tests/fault/test_fault_injection.py``.
Everything it starts is private to the run: a Tansu broker (unless one is given), a Postgres
cluster and a Redis server on free ports (the machine's shared 5432/6379 are never touched),
the instant model server and the five services.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from tenantry_common.budget import BudgetStore
from tenantry_common.db import ensure_database
from tenantry_common.localstack import free_port, start_tansu, stop_process
from tenantry_common.messaging import ensure_topics
from tenantry_common.redis import create_redis
from tenantry_common.settings import ModelSpec
from tenantry_common.topics import AUDIT, all_topics_with_dlqs

from tests.e2e.harness import System, build_system, client_token
from tests.fault.stores import InstantModel, PrivatePostgres, PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
CONSUMERS = ("retrieval", "inference", "metering", "audit")
TOPICS = ("refund policy", "shipping times", "warranty terms", "support hours", "licensing")


@dataclass(frozen=True)
class FaultConfig:
    """How hard and how long: the defaults keep the whole run within about four minutes (quiet)."""

    tenants: int = 3
    rate_per_s: float = 4.0
    rounds: int = 2  # kill -9 of each consumer per round
    steady_s: float = 5.0  # load between one recovery and the next fault
    down_s: float = 2.0  # how long a killed process or a store stays away
    chat_deadline_s: float = 45.0
    settle_timeout_s: float = 300.0  # polls: returns as soon as the system has settled
    reconcile_interval_s: float = 2.0

    @property
    def client_timeout_s(self) -> float:
        # Past the edge's deadline plus a margin, a request counts as hung.
        return self.chat_deadline_s + 30.0


@dataclass
class Tenant:
    tenant_id: str
    token: str


@dataclass
class RequestResult:
    """What the client saw for one chat request."""

    index: int
    tenant_id: str
    stream: bool
    started: float
    elapsed: float = 0.0
    status: int | None = None
    request_id: str | None = None
    finals: int = 0  # answers or error events that end the request (must be exactly one)
    answered: bool = False
    cached: bool = False
    usage: tuple[int, int] | None = None  # (prompt, completion)
    reason: str | None = None  # the error's JSON reason
    problem: str | None = None  # what makes this result unacceptable (hung, no reason, …)

    @property
    def kind(self) -> str:
        if self.problem:
            return "bad"
        # The reason's first words: budget refusals carry figures that differ per request.
        short = " ".join(str(self.reason).split()[:4])
        return "answered" if self.answered else f"error {self.status}: {short}"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class FaultReport:
    config: FaultConfig
    timeline: list[str] = field(default_factory=list)
    results: list[RequestResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    #: Wall-clock start (epoch seconds), to place broker timestamps on the timeline.
    started_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        """A plain-text report: faults, request outcomes, checks."""
        lines = ["== Fault injection", f"config: {self.config}", "", "-- timeline"]
        lines += [f"  {t}" for t in self.timeline]
        outcomes = Counter(r.kind for r in self.results)
        lines += ["", f"-- requests: {len(self.results)}"]
        lines += [f"  {n:5d}  {k}" for k, n in outcomes.most_common()]
        lines += ["", "-- figures"] + [f"  {k}: {v}" for k, v in self.figures.items()]
        lines += ["", "-- checks"]
        lines += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines += ["", f"RESULT: {'PASS' if self.ok else 'FAIL'}"]
        if self.log_dir:
            lines.append(f"service logs: {self.log_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- requests


def _reason(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if isinstance(body, dict):
        reason = body.get("error") or body.get("detail")
        return str(reason) if reason else None
    return None


async def _ask_once(
    http: httpx.AsyncClient, result: RequestResult, question: str, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    if not result.stream:
        r = await http.post("/v1/chat", json={"question": question}, headers=headers)
        result.status = r.status_code
        result.request_id = r.headers.get("x-request-id")
        if r.status_code == 200:
            body = r.json()
            result.finals = 1
            result.answered = isinstance(body.get("answer"), str)
            result.cached = bool(body.get("cached"))
            usage = body.get("usage") or {}
            result.usage = (int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:
            result.finals = 1
            result.reason = _reason(r.text)
        return
    async with http.stream(
        "POST",
        "/v1/chat",
        json={"question": question, "stream": True},
        headers=headers | {"Accept": "text/event-stream"},
    ) as r:
        result.status = r.status_code
        result.request_id = r.headers.get("x-request-id")
        if r.status_code != 200:
            result.finals = 1
            result.reason = _reason((await r.aread()).decode(errors="replace"))
            return
        event, seqs = "", []
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if result.finals:
                    result.problem = "data after the final event"
                if event == "delta":
                    seqs.append(int(data["seq"]))
                elif event == "completed":
                    result.finals += 1
                    result.answered = True
                    result.cached = bool(data.get("cached"))
                    usage = data.get("usage") or {}
                    result.usage = (int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
                elif event == "error":
                    result.finals += 1
                    result.reason = data.get("error") or data.get("detail")
        if seqs != sorted(set(seqs)):
            result.problem = f"deltas repeated or out of order: {seqs}"


async def ask(
    http: httpx.AsyncClient, *, index: int, tenant: Tenant, stream: bool, total_timeout_s: float
) -> RequestResult:
    """One chat request, classified: answered once, a clear error, or a problem."""
    topic = TOPICS[index % len(TOPICS)]
    question = f"Request {index}: what do the documents say about {topic}? ({uuid.uuid4().hex[:8]})"
    result = RequestResult(index, tenant.tenant_id, stream, time.monotonic())
    try:
        await asyncio.wait_for(_ask_once(http, result, question, tenant.token), total_timeout_s)
    except TimeoutError:
        result.problem = f"hung: no final answer within {total_timeout_s:.0f}s"
    except httpx.HTTPError as exc:
        result.problem = f"transport error {type(exc).__name__}"
    result.elapsed = time.monotonic() - result.started
    if result.problem is None:
        if result.finals != 1:
            result.problem = f"{result.finals} final answers"
        elif not result.answered and not result.reason:
            result.problem = f"status {result.status} without a JSON reason"
        elif result.answered and result.status != 200:
            result.problem = f"an answer with status {result.status}"
    return result


class LoadGenerator(threading.Thread):
    """A fixed request rate (round-robin over tenants, every other request streamed) until
    stopped; then waits for every request in flight."""

    def __init__(self, *, edge_url: str, tenants: list[Tenant], config: FaultConfig) -> None:
        super().__init__(name="fault-load", daemon=True)
        self.edge_url, self.tenants, self.config = edge_url, tenants, config
        self.results: list[RequestResult] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=50)
        timeout = httpx.Timeout(self.config.client_timeout_s, connect=10)
        async with httpx.AsyncClient(
            base_url=self.edge_url, timeout=timeout, limits=limits
        ) as http:
            tasks: list[asyncio.Task[RequestResult]] = []
            start = time.monotonic()
            index = 0
            while not self.stopping.is_set():
                due = start + index / self.config.rate_per_s
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.25))
                    continue
                tasks.append(
                    asyncio.create_task(
                        ask(
                            http,
                            index=index,
                            tenant=self.tenants[index % len(self.tenants)],
                            stream=index % 2 == 1,
                            total_timeout_s=self.config.client_timeout_s,
                        )
                    )
                )
                index += 1
            self.results = list(await asyncio.gather(*tasks))


# --------------------------------------------------------------------------- setup


def onboard(edge_url: str, operator_secret: str, count: int) -> list[Tenant]:
    """Tenants created through the edge as an operator would, each with one document."""
    http = httpx.Client(base_url=edge_url, timeout=60)
    operator = {"Authorization": f"Bearer {client_token(http, 'operator', operator_secret)}"}
    made: list[tuple[str, str, str]] = []
    for i in range(count):
        r = http.post(
            "/v1/tenants",
            json={
                "name": f"Fault tenant {i} {uuid.uuid4().hex[:6]}",
                # Enterprise: while a consumer restarts, requests pile up holding worst-case
                # reservations (~3.8k tokens each), which exhaust a pro tier's 500k a day.
                "tier": "enterprise",
                "admin_contact": "ops@fault.test",
            },
            headers=operator,
        )
        r.raise_for_status()
        body = r.json()
        made.append((body["tenant_id"], body["client_id"], body["client_secret"]))
    deadline = time.monotonic() + 120
    for tenant_id, _, _ in made:
        while http.get(f"/v1/tenants/{tenant_id}", headers=operator).json()["status"] != "active":
            if time.monotonic() > deadline:
                raise TimeoutError(f"tenant {tenant_id} not active")
            time.sleep(0.5)
    tenants = [Tenant(tid, client_token(http, cid, secret)) for tid, cid, secret in made]
    for t in tenants:
        r = http.post(
            "/v1/documents",
            json={
                "title": "Refund policy",
                "text": "Refunds are handled within thirty days of delivery. Shipping takes "
                "three to five days. Support answers on weekdays.",
            },
            headers={"Authorization": f"Bearer {t.token}"},
        )
        r.raise_for_status()
    return tenants


async def _warm_up(
    edge_url: str, tenants: list[Tenant], config: FaultConfig
) -> list[RequestResult]:
    """One answered request per tenant (plain and streamed) before any fault."""
    results: list[RequestResult] = []
    async with httpx.AsyncClient(base_url=edge_url, timeout=config.client_timeout_s) as http:
        for n, tenant in enumerate(tenants):
            deadline = time.monotonic() + 90
            for stream in (False, True):
                while True:
                    r = await ask(
                        http,
                        index=-1 - n,
                        tenant=tenant,
                        stream=stream,
                        total_timeout_s=config.client_timeout_s,
                    )
                    results.append(r)
                    if r.answered:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"warm-up never answered: {r}")
                    await asyncio.sleep(1)
    return results


# --------------------------------------------------------------------------- checks


async def _ledger(dsn: str, tenant_ids: list[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg", "postgresql"))
    try:
        return list(
            await conn.fetch(
                "SELECT tenant_id::text, request_id::text, event_id::text, day, prompt_tokens,"
                " completion_tokens, cost_micros, cached FROM usage_ledger"
                " WHERE tenant_id = ANY($1::uuid[])",
                tenant_ids,
            )
        )
    finally:
        await conn.close()


async def _audit_rows(dsn: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch(
            "SELECT event_id::text AS e, count(*) AS n FROM audit_records GROUP BY 1"
        )
        return Counter({r["e"]: int(r["n"]) for r in rows})
    finally:
        await conn.close()


@dataclass(frozen=True)
class Placement:
    """Where one event sat on its topic, and who published it (for a post-mortem)."""

    partition: int
    offset: int
    timestamp_ms: int
    summary: str


async def _published(
    bootstrap: str, topic: str, placements: dict[str, Placement] | None = None
) -> tuple[Counter[str], int]:
    """Every event id on a topic (how many times each was published) and the bad messages.

    ``placements``, when given, is filled with each id's first partition and offset.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()
        ]
        if not partitions:
            await consumer.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        ids: Counter[str] = Counter()
        bad = 0
        deadline = time.monotonic() + 60

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}")
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    try:
                        body = json.loads(record.value)
                        event_id = str(body["event_id"])
                    except (ValueError, KeyError, TypeError):
                        bad += 1
                        continue
                    ids[event_id] += 1
                    if placements is not None and event_id not in placements:
                        placements[event_id] = Placement(
                            partition=record.partition,
                            offset=record.offset,
                            timestamp_ms=record.timestamp,
                            summary=" ".join(
                                str(body.get(k)) for k in ("source", "audit_type", "action")
                            ),
                        )
        return ids, bad
    finally:
        await consumer.stop()


def _poll(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def check_requests(report: FaultReport) -> None:
    bad = [r for r in report.results if r.problem]
    report.check(
        "every request ended in exactly one final answer or a clear error, none hung",
        not bad,
        f"{len(report.results)} requests, {len(bad)} bad"
        + (f"; first: {[(r.index, r.status, r.problem) for r in bad[:5]]}" if bad else ""),
    )


def check_metering(
    report: FaultReport,
    *,
    ledger: list[asyncpg.Record],
    usage_api: dict[str, tuple[int, int]],
    spec: ModelSpec,
) -> None:
    results = report.results
    admitted = {r.request_id for r in results if r.request_id}
    answered = {r.request_id: r for r in results if r.answered and r.request_id}
    per_request = Counter(row["request_id"] for row in ledger)
    by_request = {row["request_id"]: row for row in ledger}
    twice = [rid for rid, n in per_request.items() if n > 1]
    report.check("no request metered twice", not twice, f"{len(twice)} metered more than once")
    unknown = set(per_request) - admitted
    missing = admitted - set(per_request)
    report.check(
        "every admitted request metered exactly once (and nothing else)",
        not unknown and not missing,
        f"{len(admitted)} admitted, {len(per_request)} in the ledger, "
        f"{len(missing)} missing, {len(unknown)} unknown",
    )
    wrong = [
        rid
        for rid, r in answered.items()
        if rid in by_request
        and r.usage != (by_request[rid]["prompt_tokens"], by_request[rid]["completion_tokens"])
    ]
    report.check(
        "each answered request's usage equals its ledger row",
        not wrong,
        f"{len(answered)} answered, {len(wrong)} differ",
    )
    answered_tokens = sum(sum(r.usage or (0, 0)) for r in answered.values())
    answered_cost = sum(spec.cost_micros(*(r.usage or (0, 0))) for r in answered.values())
    errored = [by_request[rid] for rid in admitted - set(answered) if rid in by_request]
    errored_tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in errored)
    errored_cost = sum(row["cost_micros"] for row in errored)
    api_tokens = sum(t for t, _ in usage_api.values())
    api_cost = sum(c for _, c in usage_api.values())
    ledger_tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in ledger)
    report.figures |= {
        "answered tokens / cost µ$": (answered_tokens, answered_cost),
        "metered after a client-side error (tokens / cost µ$)": (errored_tokens, errored_cost),
        "metering API totals (tokens / cost µ$)": (api_tokens, api_cost),
    }
    report.check(
        "metering's totals = answered usage (+ usage of requests that ended in an error)",
        api_tokens == answered_tokens + errored_tokens == ledger_tokens
        and api_cost == answered_cost + errored_cost,
        f"API {api_tokens} tokens / {api_cost} µ$; answered {answered_tokens} / {answered_cost}; "
        f"errored-but-metered {errored_tokens} / {errored_cost}",
    )


# --------------------------------------------------------------------------- the run


def run_fault_injection(
    *,
    work_dir: Path,
    config: FaultConfig | None = None,
    kafka_bootstrap: str | None = None,
    log: Callable[[str], None] = print,
) -> FaultReport:
    """Start everything privately, load, inject faults, settle, check; always clean up."""
    config = config or FaultConfig()
    report = FaultReport(config)
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def mark(text: str) -> None:
        line = f"{time.monotonic() - t0:7.1f}s  {text}"
        report.timeline.append(line)
        log(line)

    tansu = None
    pg = PrivatePostgres()
    redis = PrivateRedis()
    model = InstantModel(work_dir / "logs" / "instant-model.log")
    system: System | None = None
    try:
        if kafka_bootstrap is None:
            port = free_port()
            tansu = start_tansu(port, work_dir / "logs" / "tansu.log")
            kafka_bootstrap = f"127.0.0.1:{port}"
            asyncio.run(ensure_topics(kafka_bootstrap, all_topics_with_dlqs()))
        pg.init()
        pg.start()
        redis.start()
        model.start()
        dbs = {name: pg.dsn(f"tenantry_{name}") for name in ("auth", "metering", "audit")}

        async def create() -> None:
            for dsn in dbs.values():
                await ensure_database(dsn)

        asyncio.run(create())
        mark(
            f"private Postgres :{pg.port}, Redis :{redis.port}, model {model.base_url}, "
            f"broker {kafka_bootstrap}"
        )
        operator_secret = secrets.token_urlsafe(32)
        system = build_system(
            kafka_bootstrap=kafka_bootstrap,
            redis_url=redis.url,
            model_base_url=model.base_url,
            databases=dbs,
            work_dir=work_dir,
            extra_env={
                "auth": {
                    "TENANTRY_BOOTSTRAP_OPERATOR_SECRET": operator_secret,
                    "TENANTRY_CHAT_DEADLINE_S": str(config.chat_deadline_s),
                },
                "audit": {
                    "TENANTRY_WRITER_DSN": (
                        f"postgresql+asyncpg://tenantry_audit_writer@127.0.0.1:{pg.port}/tenantry_audit"
                    ),
                },
                "metering": {"TENANTRY_RECONCILE_INTERVAL_S": str(config.reconcile_interval_s)},
                "retrieval": {"TENANTRY_CHROMA_PATH": str(work_dir / "chroma")},
            },
        )
        system.start()
        mark("five services ready")
        tenants = onboard(system.edge.url, operator_secret, config.tenants)
        warm = asyncio.run(_warm_up(system.edge.url, tenants, config))
        mark(f"{len(tenants)} tenants active, each answered plain and streamed")

        load = LoadGenerator(edge_url=system.edge.url, tenants=tenants, config=config)
        load.start()
        mark(f"load started: {config.rate_per_s:g} req/s over {len(tenants)} tenants")
        time.sleep(config.steady_s)
        for round_ in range(config.rounds):
            for name in CONSUMERS:
                service = system.services[name]
                # Restarts overlap (the next service dies while this one still boots), but a
                # service is killed again only once its previous restart is ready.
                service.wait_ready()
                service.kill9()
                mark(f"kill -9 {name} (round {round_ + 1})")
                time.sleep(config.down_s)
                service.restarts += 1
                service.start(wait=False)
                mark(f"{name} restarting")
                time.sleep(config.steady_s)
        for name in CONSUMERS:
            started = time.monotonic()
            system.services[name].wait_ready()
            mark(f"{name} ready (waited {time.monotonic() - started:.1f}s)")
        pg.restart(down_s=config.down_s)
        mark(f"Postgres restarted (immediate stop, {config.down_s:g}s down)")
        time.sleep(config.steady_s * 2)
        redis.restart(down_s=config.down_s)
        mark(f"Redis killed and restarted empty ({config.down_s:g}s down)")
        time.sleep(config.steady_s * 2)
        load.stopping.set()
        mark("load stopped; waiting for requests in flight")
        load.join(config.client_timeout_s + 30)
        if load.is_alive():
            raise RuntimeError("the load generator did not finish")
        report.results = warm + load.results
        mark(f"all {len(report.results)} requests finished")
        (work_dir / "logs" / "requests.json").write_text(
            json.dumps([dataclasses.asdict(r) for r in report.results], indent=0)
        )
        mark(
            "outcomes: "
            + ", ".join(
                f"{k} x{n}" for k, n in Counter(r.kind for r in report.results).most_common()
            )
        )
        try:
            _settle_and_check(
                report,
                system=system,
                pg=pg,
                redis=redis,
                tenants=tenants,
                kafka_bootstrap=kafka_bootstrap,
                mark=mark,
            )
        except Exception as exc:  # a check that could not run is a failed check, with why
            report.check("the checks ran to the end", False, f"{type(exc).__name__}: {exc}")
        unhealthy = [s.name for s in system.services.values() if not s.healthy()]
        report.check("every service healthy at the end", not unhealthy, f"unhealthy: {unhealthy}")
        return report
    finally:
        if system is not None:
            system.stop()
        model.stop()
        redis.stop()
        pg.destroy()
        if tansu is not None:
            stop_process(tansu)
        logs = work_dir / "logs"
        if logs.exists():
            # Kept for the post-mortem of a failing run, where CI can show it.
            target = ROOT / "var" / "log" / "fault"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(logs, target)
            report.log_dir = target


def _settle_and_check(
    report: FaultReport,
    *,
    system: System,
    pg: PrivatePostgres,
    redis: PrivateRedis,
    tenants: list[Tenant],
    kafka_bootstrap: str,
    mark: Callable[[str], None],
) -> None:
    config = report.config
    check_requests(report)
    tenant_ids = [t.tenant_id for t in tenants]
    admitted = {r.request_id for r in report.results if r.request_id}
    metering_dsn = pg.dsn("tenantry_metering")
    ledger: list[asyncpg.Record] = []

    def ledger_complete() -> bool:
        nonlocal ledger
        ledger = asyncio.run(_ledger(metering_dsn, tenant_ids))
        return admitted <= {row["request_id"] for row in ledger}

    settled = _poll(ledger_complete, config.settle_timeout_s, 2.0)
    mark(f"ledger {'complete' if settled else 'INCOMPLETE'}: {len(ledger)} rows")
    if not settled:
        missing = admitted - {row["request_id"] for row in ledger}
        by_id = {r.request_id: r for r in report.results}
        report.figures["admitted but never metered (first 10)"] = [
            (by_id[m].index, by_id[m].status, by_id[m].reason, by_id[m].stream)
            for m in sorted(missing)[:10]
        ]

    http = httpx.Client(base_url=system.edge.url, timeout=60)
    usage_api: dict[str, tuple[int, int]] = {}
    for t in tenants:
        r = http.get(
            "/v1/usage", params={"period": "day"}, headers={"Authorization": f"Bearer {t.token}"}
        )
        r.raise_for_status()
        lines = r.json()["lines"]
        usage_api[t.tenant_id] = (
            sum(x["total_tokens"] for x in lines),
            sum(x["cost_micros"] for x in lines),
        )
    spec = ModelSpec(
        base_url="unused",
        input_price_micros_per_mtok=50_000,
        output_price_micros_per_mtok=100_000,
        context_window=2048,
    )
    check_metering(report, ledger=ledger, usage_api=usage_api, spec=spec)

    # Audit: every event id published on audit.v1 is recorded exactly once.
    audit_dsn = pg.dsn("tenantry_audit")
    placements: dict[str, Placement] = {}
    published, malformed = asyncio.run(_published(kafka_bootstrap, AUDIT.name, placements))
    stored: Counter[str] = Counter()

    def audit_complete() -> bool:
        nonlocal stored
        stored = asyncio.run(_audit_rows(audit_dsn))
        return set(published) <= set(stored)

    _poll(audit_complete, config.settle_timeout_s, 2.0)
    dead, _ = asyncio.run(_published(kafka_bootstrap, AUDIT.dlq))
    dupes = {e: n for e, n in stored.items() if n > 1}
    missing = sorted(set(published) - set(stored), key=lambda e: placements[e].timestamp_ms)
    if missing:
        report.figures["audit ids never stored (partition, offset, ms after start, what)"] = [
            (
                placements[e].partition,
                placements[e].offset,
                placements[e].timestamp_ms - int(report.started_at * 1000),
                placements[e].summary,
            )
            for e in missing[:10]
        ]
    report.figures["audit events published (with redeliveries) / distinct"] = (
        sum(published.values()),
        len(published),
    )
    report.check(
        "audit holds exactly one record per published event id",
        not dupes and set(published) == set(stored) and not malformed,
        f"{len(published)} distinct ids published, {len(stored)} stored, {len(dupes)} duplicated, "
        f"{len(set(published) - set(stored))} missing, {len(set(stored) - set(published))} "
        f"unpublished, {malformed} malformed, {len(dead)} dead-lettered",
    )

    # Budgets: after metering's reconciliation, Redis's counters equal the ledger.
    today = datetime.now(UTC).date()
    month = today.replace(day=1)
    expected = {
        t: (
            sum(
                r["prompt_tokens"] + r["completion_tokens"]
                for r in ledger
                if r["tenant_id"] == t and r["day"] == today
            ),
            sum(r["cost_micros"] for r in ledger if r["tenant_id"] == t and r["day"] >= month),
        )
        for t in tenant_ids
    }
    seen: dict[str, tuple[int, int, int]] = {}

    async def snapshots() -> None:
        client = create_redis(redis.url)
        try:
            store = BudgetStore(client)
            for t in tenant_ids:
                s = await store.snapshot(tenant_id=uuid.UUID(t), day=today)
                seen[t] = (s.tokens_used, s.spend_used_micros, s.tokens_reserved)
        finally:
            await client.aclose()

    def budgets_match() -> bool:
        asyncio.run(snapshots())
        return all(seen[t] == (*expected[t], 0) for t in tenant_ids)

    matched = _poll(budgets_match, config.reconcile_interval_s * 10 + 10, 1.0)
    report.check(
        "Redis budget counters (used, spend, reserved) equal the ledger (reserved 0)",
        matched,
        "; ".join(f"{t[:8]} redis {seen[t]} ledger {(*expected[t], 0)}" for t in tenant_ids),
    )
