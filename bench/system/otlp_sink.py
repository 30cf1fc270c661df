"""A minimal OTLP/HTTP trace receiver for the bench: appends every span to a JSON-lines file.

Run it, start the stack with ``TENANTRY_OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>``
and every service's spans (FastStream's publish/process spans carry W3C ``traceparent`` across
Kafka) land in one file that ``hops.py`` turns into a per-hop table. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def spans_of(raw: bytes) -> list[dict[str, Any]]:
    """Flatten an ExportTraceServiceRequest into one dict per span."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(raw)
    rows: list[dict[str, Any]] = []
    for resource in request.resource_spans:
        service = next(
            (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"),
            "?",
        )
        for scope in resource.scope_spans:
            for span in scope.spans:
                rows.append(
                    {
                        "service": service,
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": {
                            a.key: a.value.string_value or a.value.int_value
                            for a in span.attributes
                        },
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=14318)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.open("a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                for row in spans_of(raw):
                    out.write(json.dumps(row) + "\n")
            except Exception as exc:  # a bad export must not stop the sink
                print(f"[otlp-sink] {type(exc).__name__}: {exc}", file=sys.stderr)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
