"""``python -m tenantry_auth``: serve the edge."""

from __future__ import annotations

from tenantry_auth.runtime import pin_mmap_threshold, skip_httpx_cli


def main() -> None:
    """Run the edge with uvicorn on the configured host and port."""
    pin_mmap_threshold()
    skip_httpx_cli()
    # Imported here, after the two settings above (httpx must not be imported before).
    import uvicorn
    from tenantry_common.heap import settle_heap
    from tenantry_common.logging import configure_logging

    from tenantry_auth.app import build_app
    from tenantry_auth.config import Settings

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
