"""Where the time goes along one chat request, per hop, from the services' spans.

Reads the JSON-lines file ``otlp_sink.py`` writes. For every trace that holds the edge's
``POST /v1/chat/completions`` server span, it measures (milliseconds, from the edge's span):

* edge: request in → the request published (auth, rate limit, budget, publish): on
  ``chat.requests.v1``, or in gateway mode (RAG and cache off) on ``chat.context.v1``, which
  skips retrieval (the two retrieval rows are then left out);
* broker → retrieval: publish done → retrieval's ``process`` span starts (fetch wait);
* retrieval: its handler, incl. publishing ``chat.context.v1`` (and its audit event);
* broker → inference: ``chat.context.v1`` published → inference's ``process`` span starts;
* inference: until ``chat.responses.v1`` is published (model call, leakage check);
* inference after the answer: usage and audit publishes, offset commit (off the answer's path);
* broker → edge: answer published → the edge's HTTP span ends (reply reader, response body).

A semantic-cache hit has no inference hop: retrieval publishes the cached answer on
``chat.responses.v1`` itself. Such traces get their own table.

Prints a Markdown table of p50 / p90 per hop for each kind of request (``gateway``: the edge
straight to inference; ``through retrieval``: RAG or a cache miss; ``cache hit``) and writes it
to --out when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

EDGE = "tenantry-auth"
RETRIEVAL = "tenantry-retrieval"
INFERENCE = "tenantry-inference"

EDGE_IN = ("edge: HTTP in → request published", "http_start", "req_published")
TO_RETRIEVAL = ("broker → retrieval (fetch wait)", "req_published", "retrieval_start")
TO_EDGE = ("broker → edge reply reader → HTTP response", "resp_published", "http_end")
HOPS = [
    EDGE_IN,
    TO_RETRIEVAL,
    ("retrieval handler → chat.context.v1 published", "retrieval_start", "ctx_published"),
    ("broker → inference (fetch wait)", "ctx_published", "inference_start"),
    ("inference → chat.responses.v1 published", "inference_start", "resp_published"),
    TO_EDGE,
]
AFTER = [
    ("(off path) retrieval: audit publish + commit", "ctx_published", "retrieval_end"),
    ("(off path) inference: usage + audit publish + commit", "resp_published", "inference_end"),
]
CACHE_HIT_HOPS = [
    EDGE_IN,
    TO_RETRIEVAL,
    ("retrieval: cache lookup → chat.responses.v1 published", "retrieval_start", "resp_published"),
    TO_EDGE,
    ("(off path) retrieval: audit publish + commit", "resp_published", "retrieval_end"),
]
#: The rows of each kind of request; rows whose instants a kind lacks are left out.
ROWS = {"gateway": HOPS + AFTER, "through retrieval": HOPS + AFTER, "cache hit": CACHE_HIT_HOPS}


def marks(spans: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The instants of one request's trace, in ms since the edge's HTTP span started, and its
    kind (a key of ``ROWS``); None when the trace is incomplete."""

    def one(service: str, name: str) -> dict[str, Any] | None:
        found = [s for s in spans if s["service"] == service and s["name"] == name]
        return min(found, key=lambda s: s["start_ns"]) if found else None

    http = one(EDGE, "POST /v1/chat/completions")
    if http is None:
        return None
    t0 = int(http["start_ns"])

    def ms(ns: int) -> float:
        return (ns - t0) / 1e6

    found: dict[str, Any] = {"t0_ns": float(t0), "http_start": 0.0, "http_end": ms(http["end_ns"])}
    req = one(EDGE, "chat.requests.v1 publish")
    ret = one(RETRIEVAL, "chat.requests.v1 process")
    if req is not None and ret is not None:
        found |= {
            "req_published": ms(req["end_ns"]),
            "retrieval_start": ms(ret["start_ns"]),
            "retrieval_end": ms(ret["end_ns"]),
        }
    inf = one(INFERENCE, "chat.context.v1 process")
    if inf is None:  # a cache hit: retrieval publishes the cached answer itself
        cached = one(RETRIEVAL, "chat.responses.v1 publish")
        if cached is None or "retrieval_start" not in found:
            return None
        return found | {"kind": "cache hit", "resp_published": ms(cached["end_ns"])}
    resp = one(INFERENCE, "chat.responses.v1 publish")
    if resp is None:
        return None
    found |= {
        "inference_start": ms(inf["start_ns"]),
        "inference_end": ms(inf["end_ns"]),
        "resp_published": ms(resp["end_ns"]),
    }
    direct = one(EDGE, "chat.context.v1 publish")  # gateway mode: the edge skips retrieval
    if direct is not None:
        published = ms(direct["end_ns"])
        return found | {"kind": "gateway", "req_published": published, "ctx_published": published}
    ctx = one(RETRIEVAL, "chat.context.v1 publish")
    if ctx is None or "retrieval_start" not in found:
        return None
    return found | {"kind": "through retrieval", "ctx_published": ms(ctx["end_ns"])}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hop_table(requests: list[dict[str, Any]], rows: list[tuple[str, str, str]]) -> str:
    """p50 / p90 per hop of one kind of request, as a Markdown table."""
    lines = ["| hop | p50 ms | p90 ms |", "| --- | ---: | ---: |"]
    for label, a, b in rows:
        values = [m[b] - m[a] for m in requests if a in m and b in m]
        if not values:
            continue  # a retrieval row, with every request in gateway mode
        lines.append(f"| {label} | {statistics.median(values):.1f} | {pct(values, 0.9):.1f} |")
    total = [m["http_end"] for m in requests]
    lines.append(
        f"| **edge's HTTP span, total** | **{statistics.median(total):.1f}** "
        f"| **{pct(total, 0.9):.1f}** |"
    )
    return "\n".join(lines)


def table(path: Path, *, skip: int = 0, limit: int | None = None) -> tuple[str, int]:
    """Per-hop tables (Markdown) of the complete traces in path, and how many there were."""
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        traces[row["trace_id"]].append(row)
    requests = [m for spans in traces.values() if (m := marks(spans)) is not None]
    requests.sort(key=lambda m: m["t0_ns"])  # in arrival order
    requests = requests[skip:] if limit is None else requests[skip : skip + limit]
    if not requests:
        return "(no complete chat traces)", 0
    sections = []
    for kind, rows in ROWS.items():
        of_kind = [m for m in requests if m["kind"] == kind]
        if of_kind:
            sections.append(f"{kind}: {len(of_kind)} requests\n\n{hop_table(of_kind, rows)}")
    return "\n\n".join(sections), len(requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spans", type=Path)
    parser.add_argument("--skip", type=int, default=0, help="ignore the first N requests")
    parser.add_argument("--limit", type=int, default=None, help="then take at most N")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text, count = table(args.spans, skip=args.skip, limit=args.limit)
    text = f"{count} requests\n\n{text}"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
