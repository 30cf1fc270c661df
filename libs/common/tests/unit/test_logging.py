"""JSON logs: the fields every line carries, redaction of content, and a writer that never
blocks the thread that logs (a stalled stdout once froze a whole service's event loop)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from tenantry_common import logging as tlog
from tenantry_common.messaging import current_tenant

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    tlog._stop_listener()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    tlog._stop_listener()  # flushes the queue
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_json_with_service_level_logger_tenant_and_trace(restore_root: None) -> None:
    out = io.StringIO()
    tlog.configure_logging("retrieval", stream=out)
    tracer = TracerProvider().get_tracer("test")
    token = current_tenant.set("4b1f0c2e-0000-4000-8000-000000000001")
    try:
        with tracer.start_as_current_span("handle") as span:
            logging.getLogger("tenantry.test").info("handled %s", "it", extra={"chunks": 3})
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        current_tenant.reset(token)
    (line,) = _lines(out)
    assert line["message"] == "handled it"
    assert (line["service"], line["level"], line["logger"]) == (
        "retrieval",
        "INFO",
        "tenantry.test",
    )
    assert line["tenant_id"] == "4b1f0c2e-0000-4000-8000-000000000001"
    assert line["trace_id"] == trace_id
    assert line["chunks"] == 3
    assert "ts" in line


def test_fields_that_could_carry_content_are_redacted_and_refused(restore_root: None) -> None:
    out = io.StringIO()
    tlog.configure_logging("inference", stream=out)
    logging.getLogger("tenantry.test").warning(
        "oops", extra={"question": "my salary?", "token": "eyJhbGciOi", "tokens": 12}
    )
    (line,) = _lines(out)
    assert (line["question"], line["token"], line["tokens"]) == ("[redacted]", "[redacted]", 12)
    with pytest.raises(ValueError, match="answer"):
        tlog.log_extra(answer="42")


def test_an_exception_is_part_of_its_line(restore_root: None) -> None:
    out = io.StringIO()
    tlog.configure_logging("audit", stream=out)
    try:
        raise RuntimeError("database went away")
    except RuntimeError:
        logging.getLogger("tenantry.test").exception("append failed")
    (line,) = _lines(out)
    assert line["message"] == "append failed"
    assert "RuntimeError: database went away" in str(line["exc_info"])


def test_a_stalled_stdout_never_blocks_the_thread_that_logs(restore_root: None) -> None:
    read_fd, write_fd = os.pipe()  # nobody reads: the pipe fills after 64 KiB
    stalled = os.fdopen(write_fd, "w", buffering=1)
    tlog.configure_logging("auth", stream=stalled)
    root_handler = logging.getLogger().handlers[0]
    assert isinstance(root_handler, tlog.DroppingQueueHandler)
    done = threading.Event()

    def log_a_lot() -> None:
        log = logging.getLogger("tenantry.test")
        for n in range(tlog.LOG_QUEUE_SIZE + 5_000):  # ≈ 2 MB of lines, far past the pipe
            log.info("line %d", n, extra={"padding": "x" * 100})
        done.set()

    started = time.monotonic()
    threading.Thread(target=log_a_lot, daemon=True).start()
    try:
        assert done.wait(30), "logging blocked on a stalled stdout"
        assert root_handler.dropped > 0, "past the queue, lines are dropped, not waited for"
        assert time.monotonic() - started < 30
    finally:
        # Unblock the writer thread so the listener can stop: drain the pipe while it stops.
        os.set_blocking(read_fd, False)
        stop = threading.Thread(target=tlog._stop_listener)
        stop.start()
        while stop.is_alive():
            try:
                os.read(read_fd, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
        stalled.close()
        os.close(read_fd)


def test_lines_logged_before_a_sigterm_death_are_written(tmp_path) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown: the process dies by the signal,
    # without atexit; the queued lines must be out before that.
    out = tmp_path / "out.log"
    script = (
        "import logging, signal\n"
        "from tenantry_common import logging as tlog\n"
        f"stream = open({str(out)!r}, 'w')\n"
        "tlog.configure_logging('edge', stream=stream)\n"
        "for n in range(200):\n"
        "    logging.getLogger('tenantry.test').info('line %d', n)\n"
        "logging.getLogger('tenantry.test').info('Application shutdown complete.')\n"
        "signal.raise_signal(signal.SIGTERM)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc.stderr.decode()[-2000:]
    lines = [json.loads(line)["message"] for line in out.read_text().splitlines()]
    assert len(lines) == 201
    assert lines[-1] == "Application shutdown complete."
