"""``python -m tenantry_retrieval``: serve retrieval (port 8001 by default)."""

from __future__ import annotations

import uvicorn
from tenantry_common.heap import settle_heap
from tenantry_common.logging import configure_logging

from tenantry_retrieval.app import build_app
from tenantry_retrieval.config import RetrievalSettings


def main() -> None:
    """Configure logging, build the app from the environment and serve it."""
    settings = RetrievalSettings()
    configure_logging(settings.service_name, settings.log_level)
    app = build_app(settings)
    settle_heap(settings.gc_gen0_threshold)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) + 5,
    )


if __name__ == "__main__":
    main()
