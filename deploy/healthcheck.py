"""Container health check: exit 0 when ``GET http://127.0.0.1:<port><path>`` answers 2xx.

Used by the images' ``HEALTHCHECK`` and by docker-compose (readiness gates the start order).
Standard library only, because the runtime images carry no curl or wget.

    python /app/healthcheck.py [path] [port]

The port defaults to ``TENANTRY_HTTP_PORT``, else the service's documented port (docs/services.md),
found from ``SERVICE_MODULE`` (set by deploy/Dockerfile).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

#: Mirrors the port table of docs/services.md (tests/deploy checks that they agree).
DEFAULT_PORTS = {
    "tenantry_auth": 8000,
    "tenantry_retrieval": 8001,
    "tenantry_inference": 8002,
    "tenantry_metering": 8003,
    "tenantry_audit": 8004,
    "llama_cpp.server": 8081,
}


def resolve_port(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> int:
    """The port named on the command line, else in the environment, else the service's default."""
    if len(argv) > 2:
        return int(argv[2])
    if environ.get("TENANTRY_HTTP_PORT"):
        return int(environ["TENANTRY_HTTP_PORT"])
    return DEFAULT_PORTS[environ.get("SERVICE_MODULE", "tenantry_auth")]


def main(argv: list[str]) -> int:
    """Probe the endpoint once; 0 when healthy, 1 otherwise (Docker's convention)."""
    path = argv[1] if len(argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{resolve_port(argv, os.environ)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if 200 <= int(response.status) < 300 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
