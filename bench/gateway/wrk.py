"""Running wrk against one target and reading its ``--latency`` report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHAT_SCRIPT = HERE / "chat.lua"

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)(us|ms|s|m)\s*$")
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.\d+)?%\s+(\S+)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in (\S+),", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", re.MULTILINE)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class WrkResult:
    """One load point: latencies in milliseconds, throughput, and what failed."""

    requests: int
    duration_s: float
    rps: float
    ok_rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int

    @property
    def errors(self) -> int:
        """Responses that were not 2xx/3xx plus socket errors and timeouts."""
        return (
            self.non_2xx
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the results JSON."""
        return {**asdict(self), "errors": self.errors}


def duration_ms(text: str) -> float:
    """wrk's '780.00us', '1.69ms', '2.01s' or '1.00m' in milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Read wrk's report (run with --latency); raise ValueError when a figure is missing."""
    percentiles = {int(p): duration_ms(v) for p, v in _PERCENTILE.findall(output)}
    total = _TOTAL.search(output)
    rps = _RPS.search(output)
    if total is None or rps is None or set(percentiles) != {50, 75, 90, 99}:
        raise ValueError(f"incomplete wrk report (was --latency given?):\n{output}")
    requests = int(total.group(1))
    seconds = duration_ms(total.group(2)) / 1000.0
    socket = _SOCKET.search(output)
    connect, read, write, timeout = (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0)
    non_2xx_match = _NON_2XX.search(output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    # Timeouts and socket errors never count as completed requests in wrk; non-2xx ones do.
    ok = max(requests - non_2xx, 0)
    return WrkResult(
        requests=requests,
        duration_s=seconds,
        rps=float(rps.group(1)),
        ok_rps=round(ok / seconds, 2) if seconds > 0 else 0.0,
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=non_2xx,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
    )


def command(
    *,
    url: str,
    connections: int,
    duration_s: int,
    tokens_file: Path,
    body_file: Path,
    headers: dict[str, str],
    threads: int = 1,
    timeout_s: int = 10,
) -> list[str]:
    """The wrk command line for one load point."""
    return [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        # wrk drops timed-out requests from its latency figures: a generous timeout keeps slow
        # answers in the p99 instead of hiding them (they are also reported as timeouts).
        f"--timeout={timeout_s}s",
        "--latency",
        f"--script={CHAT_SCRIPT}",
        url,
        "--",
        str(tokens_file),
        str(body_file),
        *(f"{name}: {value}" for name, value in headers.items()),
    ]


def run(
    *,
    url: str,
    connections: int,
    duration_s: int,
    tokens_file: Path,
    body_file: Path,
    headers: dict[str, str],
    threads: int = 1,
) -> tuple[WrkResult, str]:
    """Run one bounded load point; return the parsed result and wrk's raw report."""
    cmd = command(
        url=url,
        connections=connections,
        duration_s=duration_s,
        tokens_file=tokens_file,
        body_file=body_file,
        headers=headers,
        threads=threads,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout), done.stdout
