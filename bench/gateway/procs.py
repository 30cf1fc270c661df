"""Processes the bench starts: each in its own session, logged to a file, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Proc:
    """A process started by the bench, with the log it writes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        """The process id, which is also its process-group id (each runs in its own session)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log, to explain a failure."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """Resident memory of the process and every process of its group, in MiB."""
        total_kb = 0
        for pid in _group_pids(self.pid):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        return round(total_kb / 1024, 1)

    def cpu_s(self) -> float:
        """CPU time (user + system) used so far by the process and every process of its group."""
        return group_cpu_s(self.pid)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group, wait up to timeout_s, then SIGKILL what is left."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # Workers of a server can outlive their master briefly; the group is ours alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]


def _stats() -> list[tuple[int, str, list[str]]]:
    """Every process: (pid, command name, the fields of /proc/<pid>/stat after the command)."""
    out: list[tuple[int, str, list[str]]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            command = stat[stat.index("(") + 1 : stat.rindex(")")]
            out.append((int(entry.name), command, stat[stat.rindex(")") + 2 :].split()))
    return out


def _cpu_ticks(fields: list[str]) -> int:
    """utime + stime + cutime + cstime (proc(5) fields 14 to 17; after the command: state ppid
    pgrp session tty tpgid flags minflt cminflt majflt cmajflt, then these four)."""
    return sum(int(f) for f in fields[11:15])


def _group_pids(pgid: int) -> list[int]:
    """Process ids whose process group is pgid (the third field after the command)."""
    return [pid for pid, _, fields in _stats() if int(fields[2]) == pgid]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the living processes of a process group and
    by the children they have waited for (a worker that exited and was reaped still counts)."""
    ticks = sum(_cpu_ticks(fields) for _, _, fields in _stats() if int(fields[2]) == pgid)
    return ticks / os.sysconf("SC_CLK_TCK")


def named_cpu_s(command: str) -> float:
    """CPU seconds (user + system, with reaped children) used so far by every process whose
    command name is ``command``: for servers the bench shares but did not start (Redis,
    Postgres), whose process groups are not its own."""
    ticks = sum(_cpu_ticks(fields) for _, name, fields in _stats() if name == command)
    return ticks / os.sysconf("SC_CLK_TCK")


def start(
    *,
    name: str,
    cmd: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start cmd in a new session (its own process group) with output to log_dir/name.log.

    env adds to this process's environment; a None value removes the variable.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        list(cmd),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_environment(env or {}),
        cwd=cwd,
        start_new_session=True,
    )
    return Proc(name=name, popen=popen, log_path=log_path, _log=log)


def _environment(changes: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with changes applied (None removes a variable)."""
    merged = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def http_status(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """Status and body of one HTTP request; (0, b"") when the connection fails."""
    # Only the bench's own loopback http:// URLs reach here.
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(
    check: Callable[[], bool], *, proc: Proc | None, timeout_s: float, what: str
) -> None:
    """Poll check every 0.25 s until it holds; raise if proc dies or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.25)
    tail = proc.log_tail() if proc is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s\n{tail}")
