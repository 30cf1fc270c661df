"""A fixed piece of pure-Python work, timed: how fast this machine runs Python right now.

The machine's speed moves by up to 2.5 times from hour to hour (bench/README.md), and a slow spell
makes every process of a run use more CPU per request at once, the broker and Postgres too.
Timing the same work before and after each point tells such a spell from a change in the code:
compare a point's requests/s with its yardstick, not only with the previous run's figure.
"""

from __future__ import annotations

import hashlib
import statistics
import time

#: One round: a loop of integer arithmetic and dictionary updates (the interpreter's common
#: work) and a SHA-256 of 256 KiB (native code), about 20 ms here when the machine is quiet.
_LOOP = 200_000
_DATA = bytes(range(256)) * 1024


def _round() -> float:
    started = time.perf_counter()
    counts: dict[int, int] = {}
    total = 0
    for i in range(_LOOP):
        total += i * i % 7
        counts[i & 63] = counts.get(i & 63, 0) + 1
    hashlib.sha256(_DATA).digest()
    return (time.perf_counter() - started) * 1000


def yardstick_ms(rounds: int = 7) -> float:
    """The median time of ``rounds`` rounds, in milliseconds (lower is faster)."""
    return round(statistics.median(_round() for _ in range(rounds)), 2)


if __name__ == "__main__":
    print(yardstick_ms())
