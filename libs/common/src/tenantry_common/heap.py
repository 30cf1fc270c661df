"""The cyclic garbage collector of a served process (``python -m tenantry_<service>``).

With CPython's default thresholds (700, 10, 10) a service under load ran a young collection
every few hundred container allocations net, promoted objects that were alive only across an
``await`` into the older generations, and so ran a full collection every few seconds. Each full
collection walked the whole heap, ≈ 150,000 to 190,000 objects that live as long as the
process (modules, pydantic and FastAPI schemas, SQLAlchemy metadata): ≈ 140 ms each, measured
in the edge and in inference under the gateway bench, a pause every request in flight waits out
(the p99) and ≈ 4 % of a core. ``settle_heap`` raises the young threshold and moves what start-up
built into the permanent generation (``gc.freeze``), which no collection walks again.
"""

from __future__ import annotations

import gc


def settle_heap(gen0_threshold: int) -> None:
    """Call once the app is built, just before serving: set the young generation's threshold,
    collect what start-up left behind, then freeze the rest.

    Reference counting still frees every object that is not part of a cycle at once; the
    threshold only bounds how much cyclic garbage waits for a collection (≈ ``gen0_threshold``
    container objects, a few MiB at 10,000).
    """
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, middle, oldest)
    gc.collect()
    gc.freeze()
