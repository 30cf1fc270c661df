"""Export formats: CSV (formula injection neutralised) and JSON lines, row batch by row batch."""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from tenantry_common.csvsafe import neutralise

from tenantry_audit.chain import canonical_time


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


#: (header, column) pairs: the seed's columns first, then what lets an auditor check the chain.
CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("log_id", "event_id"),
    ("tenant_id", "tenant_id"),
    ("timestamp", "occurred_at"),
    ("event_type", "audit_type"),
    ("user_id", "actor"),
    ("resource_type", "resource_type"),
    ("resource_id", "resource_id"),
    ("action", "action"),
    ("status", "status"),
    ("error", "error"),
    ("ip_address", "ip_address"),
    ("user_agent", "user_agent"),
    ("details", "details_json"),
    ("source", "source"),
    ("recorded_at", "recorded_at"),
    ("sequence", "sequence"),
    ("record_hash", "hash"),
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return canonical_time(value)
    return neutralise(value)


def csv_header() -> bytes:
    """The CSV header line."""
    return _csv_lines([[header for header, _ in CSV_COLUMNS]])


def csv_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """CSV lines for a batch of records; every cell quoted and neutralised."""
    return _csv_lines([[_cell(row[column]) for _, column in CSV_COLUMNS] for row in rows])


def _csv_lines(lines: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(lines)
    return buffer.getvalue().encode("utf-8")


def jsonl_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """JSON lines for a batch of records (``details`` as an object)."""
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for header, column in CSV_COLUMNS:
            value = row[column]
            if column == "details_json":
                value = json.loads(value)
            elif isinstance(value, datetime):
                value = canonical_time(value)
            elif value is not None and not isinstance(value, int | str):
                value = str(value)
            item[header] = value
        out.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode("utf-8") if out else b""


async def encode(
    batches: AsyncIterator[Sequence[Mapping[str, Any]]], fmt: ExportFormat
) -> AsyncIterator[bytes]:
    """The export's bytes, one chunk per batch of rows (never the whole export at once)."""
    if fmt is ExportFormat.CSV:
        yield csv_header()
    async for batch in batches:
        yield csv_rows(batch) if fmt is ExportFormat.CSV else jsonl_rows(batch)
