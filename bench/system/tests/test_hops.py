"""hops.py: a trace's instants, for a request answered by inference and for a cache hit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hops

pytestmark = pytest.mark.unit

MS = 1_000_000


def span(service: str, name: str, start_ms: float, end_ms: float, trace: str) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "service": service,
        "name": name,
        "start_ns": int(start_ms * MS),
        "end_ns": int(end_ms * MS),
    }


def rag_trace(trace: str) -> list[dict[str, Any]]:
    return [
        span("tenantry-auth", "POST /v1/chat/completions", 0, 40, trace),
        span("tenantry-auth", "chat.requests.v1 publish", 4, 6, trace),
        span("tenantry-retrieval", "chat.requests.v1 process", 10, 25, trace),
        span("tenantry-retrieval", "chat.context.v1 publish", 18, 20, trace),
        span("tenantry-inference", "chat.context.v1 process", 24, 38, trace),
        span("tenantry-inference", "chat.responses.v1 publish", 30, 32, trace),
    ]


def cache_hit_trace(trace: str) -> list[dict[str, Any]]:
    return [
        span("tenantry-auth", "POST /v1/chat/completions", 0, 20, trace),
        span("tenantry-auth", "chat.requests.v1 publish", 4, 6, trace),
        span("tenantry-retrieval", "chat.requests.v1 process", 10, 17, trace),
        span("tenantry-retrieval", "chat.responses.v1 publish", 12, 13, trace),
        # retrieval's cache-fill subscriber reads the answer too: not on the request's path
        span("tenantry-retrieval", "chat.responses.v1 process", 15, 16, trace),
    ]


def test_an_answered_request_goes_through_retrieval_and_inference() -> None:
    found = hops.marks(rag_trace("a"))
    assert found is not None
    assert found["kind"] == "through retrieval"
    assert (found["req_published"], found["retrieval_start"], found["ctx_published"]) == (6, 10, 20)
    assert (found["inference_start"], found["resp_published"], found["http_end"]) == (24, 32, 40)


def test_a_cache_hit_is_answered_by_retrieval_without_inference() -> None:
    found = hops.marks(cache_hit_trace("c"))
    assert found is not None
    assert found["kind"] == "cache hit"
    assert (found["req_published"], found["retrieval_start"]) == (6, 10)
    assert (found["resp_published"], found["retrieval_end"], found["http_end"]) == (13, 17, 20)


def test_a_gateway_request_goes_from_the_edge_straight_to_inference() -> None:
    trace = [
        span("tenantry-auth", "POST /v1/chat/completions", 0, 20, "g"),
        span("tenantry-auth", "chat.context.v1 publish", 4, 6, "g"),
        span("tenantry-inference", "chat.context.v1 process", 9, 18, "g"),
        span("tenantry-inference", "chat.responses.v1 publish", 12, 14, "g"),
    ]
    found = hops.marks(trace)
    assert found is not None
    assert found["kind"] == "gateway"
    assert "retrieval_start" not in found
    assert (found["ctx_published"], found["inference_start"], found["http_end"]) == (6, 9, 20)


def test_a_trace_without_an_answer_is_left_out() -> None:
    assert hops.marks(rag_trace("x")[:3]) is None


def test_each_kind_gets_its_own_table(tmp_path: Path) -> None:
    rows = rag_trace("a") + rag_trace("b") + cache_hit_trace("c")
    spans = tmp_path / "spans.jsonl"
    spans.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text, count = hops.table(spans)
    assert count == 3
    through_retrieval, cache_hit = text.split("\n\ncache hit: ")
    assert through_retrieval.startswith("through retrieval: 2 requests")
    assert "| retrieval: cache lookup → chat.responses.v1 published | 3.0 | 3.0 |" in cache_hit
    assert "| **edge's HTTP span, total** | **20.0** | **20.0** |" in cache_hit
    assert "inference" not in cache_hit
