"""Process-wide settings of the served edge (``python -m tenantry_auth``), applied before the app
is imported. Each is measured in ``services/auth/bench/rss_at_rest.py`` (see the README)."""

from __future__ import annotations

import ctypes
import sys

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt(3)``.
_M_MMAP_THRESHOLD = -3
#: Blocks of this size and larger are mmapped, and unmapped (returned to the OS) when freed.
MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make large allocations go back to the OS when freed; False where libc has no mallopt.

    glibc raises its mmap threshold to the size of every mmapped block that is freed (up to
    32 MiB). After the first argon2id hash (19 MiB of working memory) every later one is
    therefore carved from the malloc arena of the thread that runs it, and each of asyncio's
    worker threads keeps its 19 MiB after the hash: 19 MiB at rest (the bootstrap operator's
    secret is hashed at start) and up to one more per concurrent token request. Setting
    ``M_MMAP_THRESHOLD`` explicitly fixes the threshold and turns that adjustment off
    (mallopt(3); the same as ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def skip_httpx_cli() -> None:
    """Keep httpx from importing its command-line client (≈ 3 MiB: rich and Pygments).

    httpx imports ``httpx._main`` whenever those packages are installed (here they are, for
    typer) and falls back to a stub on ImportError; a ``None`` in ``sys.modules`` makes that
    import fail. The edge never runs the httpx CLI. No effect once httpx is imported.
    """
    if "httpx" not in sys.modules:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]
