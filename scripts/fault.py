"""Fault injection under load: ``python scripts/fault.py [--rounds N] [--rate R] ...``.

Starts a private broker, Postgres cluster, Redis, an instant model server and the five
services; sends chat requests at a fixed rate while it kill -9s and restarts each consumer
service (several rounds) and restarts Postgres and Redis; then checks the invariants and prints
a report. Exit code 0 when every check passed. See docs/fault-injection.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fault.run import FaultConfig, run_fault_injection  # noqa: E402


def main() -> int:
    defaults = FaultConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=defaults.tenants)
    parser.add_argument("--rate", type=float, default=defaults.rate_per_s, help="requests/s")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--steady", type=float, default=defaults.steady_s, help="s between faults")
    parser.add_argument("--kafka", default=None, help="use this broker instead of a private one")
    args = parser.parse_args()
    config = FaultConfig(
        tenants=args.tenants, rate_per_s=args.rate, rounds=args.rounds, steady_s=args.steady
    )
    with tempfile.TemporaryDirectory(prefix="tenantry-fault-") as work:
        report = run_fault_injection(work_dir=Path(work), config=config, kafka_bootstrap=args.kafka)
    print()
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
