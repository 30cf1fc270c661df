"""Tracing: spans are recorded only when something exports them; trace ids exist either way."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tenantry_common.telemetry import setup_tracing

pytestmark = pytest.mark.unit


def test_without_an_exporter_spans_are_not_recorded_but_carry_trace_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    tracer = setup_tracing("test").get_tracer("test")
    with (
        tracer.start_as_current_span("handle") as span,
        tracer.start_as_current_span("child") as child,
    ):
        assert not span.is_recording()
        assert span.get_span_context().is_valid
        assert child.get_span_context().trace_id == span.get_span_context().trace_id


def test_with_an_exporter_spans_are_recorded_and_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    exporter = InMemorySpanExporter()
    provider = setup_tracing("test", exporter=exporter)
    with provider.get_tracer("test").start_as_current_span("handle") as span:
        assert span.is_recording()
    provider.force_flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["handle"]


def test_an_explicit_sampler_is_honoured_without_an_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    with setup_tracing("test").get_tracer("test").start_as_current_span("handle") as span:
        assert span.is_recording()
