"""``python -m tenantry_inference``: serve the inference service."""

from __future__ import annotations

import uvicorn
from tenantry_common.heap import settle_heap
from tenantry_common.logging import configure_logging
from tenantry_common.telemetry import setup_tracing

from tenantry_inference.app import build_app
from tenantry_inference.config import Settings


def main() -> None:
    """Configure logging and tracing, then run the app until SIGTERM."""
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level)
    provider = setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    app = build_app(settings, tracer_provider=provider)
    settle_heap(settings.gc_gen0_threshold)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
    )


if __name__ == "__main__":
    main()
