"""``python -m tenantry_metering``: serve metering on its port."""

from __future__ import annotations

import uvicorn
from tenantry_common.heap import settle_heap
from tenantry_common.logging import configure_logging

from tenantry_metering.app import build_app
from tenantry_metering.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level)
    app = build_app(settings)
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
