"""OpenTelemetry tracing: a provider per service, exporting over OTLP when an endpoint is set."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler


def setup_tracing(
    service: str, otlp_endpoint: str | None = None, exporter: SpanExporter | None = None
) -> TracerProvider:
    """A tracer provider for this service (installed globally); spans exported if configured.

    Without an exporter spans are not recorded, yet each still has its trace and span ids, so
    trace ids reach logs and Kafka headers (W3C ``traceparent``) and a trace can be followed
    across services. Recording spans that go nowhere was ≈ 5 % of the platform's CPU per
    request. With an exporter the SDK's sampler applies (``OTEL_TRACES_SAMPLER``, by default
    every trace its caller sampled, and every new one); ``OTEL_TRACES_SAMPLER`` set explicitly
    is honoured either way.
    """
    sampler: Sampler | None = None  # the SDK's: read from OTEL_TRACES_SAMPLER
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    if exporter is None and not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ALWAYS_OFF
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"tenantry-{service}"}), sampler=sampler
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return provider
