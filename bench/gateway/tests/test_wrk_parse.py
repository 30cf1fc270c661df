"""The wrk report parser, the instant server's bodies and the comparison ratios."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import instant
import procs
import report
import wrk

pytestmark = pytest.mark.unit

#: Python that burns ≈ 0.3 s of CPU (for the CPU-accounting tests).
BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"

REPORT = """Running 15s test @ http://127.0.0.1:18091/v1/chat/completions
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.10ms   20.02ms 412.00ms   80.00%
    Req/Sec   520.11     60.00   700.00     70.00%
  Latency Distribution
     50%  780.00us
     75%    1.92ms
     90%    2.01s
     99%    1.00m
  7800 requests in 15.02s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 20
Requests/sec:    519.31
Transfer/sec:    211.33KB
"""


def test_parse_reads_percentiles_in_every_unit_and_counts_errors() -> None:
    result = wrk.parse(REPORT)
    assert result.p50_ms == pytest.approx(0.78)
    assert result.p75_ms == pytest.approx(1.92)
    assert result.p90_ms == pytest.approx(2010.0)
    assert result.p99_ms == pytest.approx(60_000.0)
    assert result.requests == 7800
    assert result.duration_s == pytest.approx(15.02)
    assert result.rps == pytest.approx(519.31)
    assert result.ok_rps == pytest.approx((7800 - 20) / 15.02, rel=1e-3)
    assert (result.non_2xx, result.read_errors, result.timeouts) == (20, 2, 3)
    assert result.errors == 25


def test_parse_without_error_lines_reports_zero_errors() -> None:
    clean = "\n".join(
        line for line in REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    assert wrk.parse(clean).errors == 0


def test_parse_refuses_a_report_without_latency_distribution() -> None:
    partial = "\n".join(line for line in REPORT.splitlines() if "%  " not in line)
    with pytest.raises(ValueError, match="--latency"):
        wrk.parse(partial)


def test_instant_bodies_are_valid_openai_json_with_usage() -> None:
    completion = json.loads(instant.completion_body())
    assert completion["usage"]["total_tokens"] == instant.PROMPT_TOKENS + instant.COMPLETION_TOKENS
    assert completion["choices"][0]["message"]["content"] == instant.CONTENT
    events = [
        line.removeprefix("data: ")
        for line in instant.stream_body().split("\n\n")
        if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == instant.CONTENT
    assert chunks[-1]["usage"]["completion_tokens"] == instant.COMPLETION_TOKENS


def test_instant_config_quotes_bodies_for_nginx() -> None:
    conf = instant.render_config(prefix=Path("/tmp/x"), port=1234)
    assert "listen 127.0.0.1:1234" in conf
    assert "return 200 '" + instant.completion_body() + "'" in conf


def test_the_stack_catalogue_gives_tenantry_whole_answers_and_streams_on_request() -> None:
    # Inference asks for a whole answer when its client did, and for SSE (saying so in Accept)
    # when its client streams: one base URL must serve both. Before 2026-12-04 a JSON body
    # answered its streamed calls, which parsed as empty, zero-token answers.
    run_py = Path(__file__).resolve().parents[1] / "run.py"
    printed = subprocess.run(
        [sys.executable, str(run_py), "--print-stack-env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exports = dict(word.split("=", 1) for word in shlex.split(printed) if "=" in word)
    (spec,) = json.loads(exports["TENANTRY_MODELS"]).values()
    path = urlsplit(spec["base_url"]).path
    assert path == "/v1"
    conf = instant.render_config(prefix=Path("/tmp/x"), port=1234)
    plain = conf.split(f"location = {path}/chat/completions {{", 1)[1].split("\n        }", 1)[0]
    assert 'if ($http_accept ~* "text/event-stream")' in plain
    assert "rewrite ^ /stream/v1/chat/completions last;" in plain
    streamed = conf.split("location = /stream/v1/chat/completions {", 1)[1].split("}", 1)[0]
    assert "default_type text/event-stream" in streamed


def _point(rps: float, p99: float) -> dict[str, float]:
    return {"ok_rps": rps, "p99_ms": p99, "errors": 0}


def test_ratios_compare_tenantry_with_each_peer_at_the_same_concurrency() -> None:
    points = {
        "tenantry": {50: _point(900.0, 30.0)},
        "litellm": {50: _point(300.0, 150.0)},
        "portkey": {50: _point(2000.0, 10.0)},
    }
    ratios = report.ratios(points)
    assert ratios[50]["rps_vs_litellm"] == pytest.approx(3.0)
    assert ratios[50]["p99_vs_litellm"] == pytest.approx(0.2)
    assert ratios[50]["rps_vs_portkey"] == pytest.approx(0.45)
    assert ratios[50]["meets_litellm_rps"] is True
    assert ratios[50]["meets_litellm_p99"] is True
    assert ratios[50]["meets_portkey_rps"] is False


def test_ratios_are_absent_when_a_target_was_not_measured() -> None:
    points = {"litellm": {50: _point(300.0, 150.0)}, "portkey": {50: _point(2000.0, 10.0)}}
    assert report.ratios(points)[50]["rps_vs_litellm"] is None


def test_the_table_shows_what_other_targets_used_beside_each_point() -> None:
    points = {"tenantry": {50: _point(900.0, 30.0) | {"p50_ms": 20.0, "others_cpu_cores": 0.05}}}
    table = report.markdown(points, {})
    assert "| other targets' CPU (cores) |" in table
    assert "| tenantry | 50 | 900.0 | 20.00 | 30.00 | 0 | — | 0.05 | — | — | — |" in table


def test_the_table_shows_the_machines_speed_around_each_point() -> None:
    timed = _point(900.0, 30.0) | {"p50_ms": 20.0, "yardstick_ms": [22.64, 31.2]}
    table = report.markdown({"tenantry": {50: timed}}, {})
    assert "| yardstick ms before → after |" in table
    assert "| — | — | — | — | 22.6 → 31.2 |" in table


def test_cpu_per_request_splits_the_targets_own_processes_from_the_shared_servers() -> None:
    before = {"auth": 10.0, "inference": 20.0, "kafka": 5.0, "nginx": 1.0, "redis": 2.0}
    after = {"auth": 11.0, "inference": 22.5, "kafka": 5.5, "nginx": 1.1, "redis": 2.2}
    cpu = report.cpu_ms_per_request(before, after, answered=1000, target="tenantry")
    assert cpu["auth"] == pytest.approx(1.0)
    assert cpu["inference"] == pytest.approx(2.5)
    assert cpu["redis"] == pytest.approx(0.2)
    assert cpu["own"] == pytest.approx(1.0 + 2.5 + 0.5)  # not nginx's nor Redis's
    empty = report.cpu_ms_per_request(before, after, answered=0, target="tenantry")
    assert set(empty.values()) == {None}
    # nginx answering wrk directly: its own CPU is nginx's.
    direct = report.cpu_ms_per_request(
        {"nginx": 1.0, "redis": 2.0}, {"nginx": 1.5, "redis": 2.0}, answered=100_000, target="nginx"
    )
    assert direct["own"] == pytest.approx(0.005)


def test_the_table_shows_cpu_per_request_and_tenantrys_by_process() -> None:
    cpu = {
        "auth": 1.0,
        "inference": 2.5,
        "kafka": 0.5,
        "nginx": 0.1,
        "redis": 0.2,
        "postgres": 0.05,
        "own": 4.0,
    }
    points = {"tenantry": {50: _point(900.0, 30.0) | {"p50_ms": 20.0, "cpu_ms_per_request": cpu}}}
    table = report.markdown(points, {})
    assert "| tenantry | 50 | 900.0 | 20.00 | 30.00 | 0 | — | — | 4.000 | 0.250 | — |" in table
    assert "| connections | auth | inference | kafka | redis | postgres |" in table
    assert "| 50 | 1.000 | 2.500 | 0.500 | 0.200 | 0.050 |" in table


def test_named_cpu_counts_processes_by_their_command_name(tmp_path: Path) -> None:
    # A command name of this test's own: the kernel names a process after the file it ran.
    command = tmp_path / "burn-cpu-test"
    command.symlink_to(sys.executable)
    assert procs.named_cpu_s(command.name) == 0.0
    proc = subprocess.Popen(
        [str(command), "-c", BURN + "\nprint('done', flush=True)\ninput()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"done\n"
        assert procs.named_cpu_s(command.name) >= 0.25
    finally:
        proc.communicate(b"\n", timeout=20)


def test_group_cpu_counts_every_process_of_the_group_and_its_reaped_children() -> None:
    # A parent and a child in one new session burn ≈ 0.3 s of CPU each; the child exits and is
    # reaped, the parent waits for stdin: the group's CPU still holds both.
    script = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {BURN!r}], check=True)\n"
        f"exec({BURN!r})\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"  # stay alive (and counted) until the test has read the group
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"done\n"
        assert procs.group_cpu_s(proc.pid) >= 0.55
    finally:
        proc.communicate(b"", timeout=20)
    assert procs.group_cpu_s(proc.pid) == 0.0  # nothing of the group is left
