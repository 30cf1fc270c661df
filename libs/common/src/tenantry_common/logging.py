"""JSON logs with ``service``, ``trace_id`` and ``tenant_id`` fields, and never a payload."""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import queue
import signal
import sys
import threading
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from tenantry_common.messaging import current_tenant

#: Attribute names that would carry user content; dropped from every record.
FORBIDDEN_FIELDS = frozenset(
    {"text", "question", "answer", "prompt", "body", "payload", "content", "document", "token"}
)


class ContextFilter(logging.Filter):
    """Adds trace and tenant ids; removes fields that could carry user content or secrets."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else None
        if not getattr(record, "tenant_id", None):
            record.tenant_id = current_tenant.get()
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI duplicate of the message
        for name in FORBIDDEN_FIELDS & record.__dict__.keys():
            setattr(record, name, "[redacted]")
        return True


#: Log lines waiting for the writer thread; past this, new lines are dropped (and counted).
LOG_QUEUE_SIZE = 10_000


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Formats each record where it is logged (trace and tenant context are there) and queues
    the finished JSON line; never blocks: with the queue full, the line is dropped and counted.

    Logging straight to stdout blocked the event loop whenever the reader of stdout stalled (a
    full pipe froze a whole service, its health endpoint included). A lost log line is better.
    """

    def __init__(self, log_queue: queue.Queue[Any]) -> None:
        super().__init__(log_queue)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        line = self.format(record)  # the JSON, exceptions included
        return logging.makeLogRecord({"msg": line, "levelno": record.levelno})

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LogWriter(logging.handlers.QueueListener):
    """The thread that writes queued lines; stopping it writes out what is queued, within a
    bound (an exit must not hang on a stdout nobody reads)."""

    stop_timeout_s = 5.0

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            # QueueListener's sentinel is None (typeshed knows neither it nor Queue.put here).
            self.queue.put(None, timeout=self.stop_timeout_s)  # type: ignore[attr-defined]
        thread.join(self.stop_timeout_s)
        self._thread = None


_listener: LogWriter | None = None


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def _flush_then_terminate(signum: int, _frame: object) -> None:
    """SIGTERM with the default outcome (death by the signal), after the queued lines are out.

    uvicorn handles SIGTERM itself while it serves, and after its graceful shutdown restores
    the handler it found and raises the signal again; with the default handler the process
    died there without running ``atexit``, and the queue's last lines ("Application shutdown
    complete.") were lost.
    """
    _stop_listener()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _flush_on_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _flush_then_terminate):
        signal.signal(signal.SIGTERM, _flush_then_terminate)


def configure_logging(service: str, level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Route every logger (ours, uvicorn's, FastStream's) through one JSON handler on stdout.

    The lines are written by a background thread (``DroppingQueueHandler``), never by the
    thread that logs; they are flushed at exit, including an exit by SIGTERM.
    """
    global _listener
    _stop_listener()
    log_queue: queue.Queue[Any] = queue.Queue(maxsize=LOG_QUEUE_SIZE)
    handler = DroppingQueueHandler(log_queue)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(ContextFilter(service))
    writer = logging.StreamHandler(stream if stream is not None else sys.stdout)
    writer.setFormatter(logging.Formatter("%(message)s"))
    _listener = LogWriter(log_queue, writer)
    _listener.start()
    atexit.register(_stop_listener)
    _flush_on_sigterm()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiokafka"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # One "HTTP Request: POST …" line per model call from the openai SDK's HTTP client, beside
    # inference's own "chat answered" line, which says more (model, outcome, tokens, latency).
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_extra(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call, refusing fields that could carry content."""
    bad = FORBIDDEN_FIELDS & fields.keys()
    if bad:
        raise ValueError(f"log fields {sorted(bad)} may carry user content")
    return fields
