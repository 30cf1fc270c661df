"""Ratios against the issue's targets and the markdown table of one run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The targets, at the same concurrency (gateway mode: RAG off, every control on).
MIN_RPS_VS_LITELLM = 3.0
MAX_P99_VS_LITELLM = 0.3
MIN_RPS_VS_PORTKEY = 0.5

Points = Mapping[str, Mapping[int, Mapping[str, Any]]]


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 3)


def ratios(points: Points) -> dict[int, dict[str, Any]]:
    """Per concurrency: our ok-rps and p99 against LiteLLM's, our ok-rps against Portkey's."""
    levels = sorted({c for per_target in points.values() for c in per_target})
    out: dict[int, dict[str, Any]] = {}
    for level in levels:

        def figure(target: str, key: str, level: int = level) -> float | None:
            point = points.get(target, {}).get(level)
            return None if point is None else float(point[key])

        rps_litellm = _ratio(figure("tenantry", "ok_rps"), figure("litellm", "ok_rps"))
        p99_litellm = _ratio(figure("tenantry", "p99_ms"), figure("litellm", "p99_ms"))
        rps_portkey = _ratio(figure("tenantry", "ok_rps"), figure("portkey", "ok_rps"))
        out[level] = {
            "rps_vs_litellm": rps_litellm,
            "p99_vs_litellm": p99_litellm,
            "rps_vs_portkey": rps_portkey,
            "meets_litellm_rps": None if rps_litellm is None else rps_litellm >= MIN_RPS_VS_LITELLM,
            "meets_litellm_p99": None if p99_litellm is None else p99_litellm <= MAX_P99_VS_LITELLM,
            "meets_portkey_rps": None if rps_portkey is None else rps_portkey >= MIN_RPS_VS_PORTKEY,
        }
    return out


#: Servers every target's requests pass through or may use: not a peer's own CPU.
SHARED_PROCESSES = ("nginx", "redis", "postgres")


def cpu_ms_per_request(
    before: Mapping[str, float], after: Mapping[str, float], *, answered: int, target: str
) -> dict[str, float | None]:
    """Milliseconds of CPU per answered request of each process, across one point, and
    ``own``: the sum over the target's own processes (the shared servers apart, unless the
    target is one of them: nginx's own row)."""
    if answered <= 0:
        return dict.fromkeys((*after, "own"))
    out: dict[str, float | None] = {
        name: round((after[name] - before.get(name, after[name])) * 1000 / answered, 3)
        for name in after
    }
    out["own"] = round(
        sum(
            v
            for k, v in out.items()
            if v is not None and (k == target or k not in SHARED_PROCESSES)
        ),
        3,
    )
    return out


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _speeds(speeds: Sequence[float] | None) -> str:
    """The machine's yardstick before and after a point (older runs did not time it)."""
    return " → ".join(f"{ms:.1f}" for ms in speeds) if speeds else "—"


def _verdict(value: float | None, met: bool | None) -> str:
    if value is None:
        return "pending"
    return f"{value:.2f}x {'✓' if met else '✗'}"


def markdown(points: Points, meta: Mapping[str, Any]) -> str:
    """The figures table (one row per target and concurrency) and the ratio table."""
    lines = [
        f"Run {meta.get('started_at', '?')}: wrk {meta.get('threads', 1)} thread, "
        f"{meta.get('duration_s', '?')} s per point, {meta.get('tenants', '?')} tenant tokens "
        f"rotated, load average before the run {meta.get('loadavg_before', '?')}.",
        "",
        "| target | connections | ok req/s | p50 ms | p99 ms | errors | RSS after (MiB) "
        "| other targets' CPU (cores) | own CPU ms per request | Redis + Postgres CPU ms "
        "per request | yardstick ms before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in ("tenantry", "litellm", "portkey", "nginx"):
        for level, point in sorted(points.get(target, {}).items()):
            cpu = point.get("cpu_ms_per_request") or {}
            shared = [v for v in (cpu.get("redis"), cpu.get("postgres")) if v is not None]
            lines.append(
                f"| {target} | {level} | {_num(point['ok_rps'])} | {_num(point['p50_ms'], 2)} "
                f"| {_num(point['p99_ms'], 2)} | {point['errors']} "
                f"| {_num(point.get('rss_mb'))} | {_num(point.get('others_cpu_cores'), 2)} "
                f"| {_num(cpu.get('own'), 3)} "
                f"| {_num(sum(shared) if shared else None, 3)} "
                f"| {_speeds(point.get('yardstick_ms'))} |"
            )
    by_process = {
        level: point["cpu_ms_per_request"]
        for level, point in sorted(points.get("tenantry", {}).items())
        if point.get("cpu_ms_per_request")
    }
    if by_process:
        names = [n for n in next(iter(by_process.values())) if n not in ("own", "nginx")]
        lines += [
            "",
            "Tenantry's CPU per answered request by process (ms):",
            "",
            "| connections | " + " | ".join(names) + " |",
            "| ---: | " + " | ".join("---:" for _ in names) + " |",
        ]
        for level, cpu in by_process.items():
            lines.append(f"| {level} | " + " | ".join(_num(cpu.get(n), 3) for n in names) + " |")
    lines += [
        "",
        "| connections | ours/LiteLLM req/s (≥ 3) | ours/LiteLLM p99 (≤ 0.3) "
        "| ours/Portkey req/s (≥ 0.5) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for level, row in ratios(points).items():
        lines.append(
            f"| {level} | {_verdict(row['rps_vs_litellm'], row['meets_litellm_rps'])} "
            f"| {_verdict(row['p99_vs_litellm'], row['meets_litellm_p99'])} "
            f"| {_verdict(row['rps_vs_portkey'], row['meets_portkey_rps'])} |"
        )
    return "\n".join(lines) + "\n"
