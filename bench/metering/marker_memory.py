"""Redis memory per settled usage event: one key per event (before 2026-12-02) vs one hash
field per event in a hash per tenant and day (now). Uses Redis database 15 and empties it.

    .venv/bin/python bench/metering/marker_memory.py [--events 100000]
"""

from __future__ import annotations

import argparse
import uuid

import redis

SETTLED_MARKER_TTL_S = 3 * 24 * 3600


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    n = parser.parse_args().events
    client = redis.Redis(db=15)
    client.flushdb()
    tenant = uuid.uuid4()
    base = used(client)
    pipe = client.pipeline(transaction=False)
    for _ in range(n):
        pipe.set(
            f"tenantry:{{{tenant}}}:budget:settled:{uuid.uuid4()}", "1", ex=SETTLED_MARKER_TTL_S
        )
    pipe.execute()
    per_key = (used(client) - base) / n
    client.flushdb()
    base = used(client)
    key = f"tenantry:{{{tenant}}}:budget:settled:2026-12-02"
    pipe = client.pipeline(transaction=False)
    for _ in range(n):
        pipe.hsetnx(key, uuid.uuid4().bytes, "1")
    pipe.expire(key, SETTLED_MARKER_TTL_S)
    pipe.execute()
    per_field = (used(client) - base) / n
    client.flushdb()
    print(f"key per event: {per_key:.0f} B/event; hash field per event: {per_field:.0f} B/event")


if __name__ == "__main__":
    main()
