"""JSON logs with ``service``, ``trace_id`` and ``tenant_id`` fields, and never a payload."""

from __future__ import annotations

import logging
import sys
from typing import Any

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


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (ours, uvicorn's, FastStream's) through one JSON handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiokafka"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def log_extra(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call, refusing fields that could carry content."""
    bad = FORBIDDEN_FIELDS & fields.keys()
    if bad:
        raise ValueError(f"log fields {sorted(bad)} may carry user content")
    return fields
