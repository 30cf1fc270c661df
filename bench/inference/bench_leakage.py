"""CPU of inference's leakage scan on a RAG-sized prompt: as it is (secret patterns run only on
texts holding one of their literal needles; tenant names as one trie-shaped expression), against
the scan before those two changes (every pattern on every text; names as one plain alternation,
longest first).

No services needed::

    .venv/bin/python bench/inference/bench_leakage.py

The prompt is ordinary prose of ``--chars`` characters (a question with four retrieved passages
is ≈ 2-6 KB) with no secret and no tenant name in it, as nearly every prompt is; the registry
holds ``--tenants`` tenants. The variants alternate for ``--rounds`` rounds in one process
(this machine is noisy: the ratio is taken within the run), and a first check scans the text, and
the text with a secret and a tenant's name appended, every way: each must find the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
import re
import statistics
import time
import uuid
from collections.abc import Callable

from tenantry_inference import leakage
from tenantry_inference.leakage import LeakageDetector, TenantRegistry

WORDS = [
    "refund",
    "policy",
    "customer",
    "order",
    "shipping",
    "returns",
    "within",
    "thirty",
    "days",
    "of",
    "the",
    "receipt",
    "invoice",
    "account",
    "support",
    "team",
    "product",
    "warranty",
    "service",
    "annual",
    "plan",
    "monthly",
    "billing",
    "cancel",
    "renewal",
    "credit",
    "note",
    "replacement",
    "damaged",
    "item",
    "contact",
    "us",
    "by",
    "email",
    "or",
    "phone",
    "during",
    "business",
    "hours",
]
NAMES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne")


def prose(chars: int, rng: random.Random) -> str:
    """Sentences of ordinary words and a few numbers, about ``chars`` long."""
    sentences: list[str] = []
    length = 0
    while length < chars:
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 2026)))
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        length += len(sentence) + 1
    return " ".join(sentences)


def per_scan_us(scan: Callable[[], object], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        scan()
    return (time.process_time() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=300, help="scans per variant per round")
    args = parser.parse_args()

    rng = random.Random(7)
    registry = TenantRegistry()
    names = [f"{rng.choice(NAMES)} {rng.choice(WORDS).title()} {i}" for i in range(args.tenants)]
    for name in names:
        registry.upsert(uuid.uuid4(), name)
    detector = LeakageDetector(registry)
    me = uuid.uuid4()
    text = prose(args.chars, rng)

    with_needles = leakage._SECRET_PATTERNS
    without = tuple(dataclasses.replace(p, needles=()) for p in with_needles)
    trie, owners = registry.name_pattern()
    plain = re.compile(
        r"(?<!\w)(?:"
        + "|".join(
            r"\s+".join(re.escape(word) for word in key.split())
            for key in sorted(owners, key=len, reverse=True)
        )
        + r")(?!\w)",
        re.IGNORECASE,
    )
    variants = {
        "before: every pattern, plain name alternation": (without, plain),
        "needles, plain name alternation": (with_needles, plain),
        "now: needles, names as a trie": (with_needles, trie),
    }

    def scan_with(variant: str, body: str) -> list[object]:
        patterns, names = variants[variant]
        leakage._SECRET_PATTERNS = patterns
        registry._pattern = names
        try:
            return list(detector.scan(body, tenant_id=me))
        finally:
            leakage._SECRET_PATTERNS = with_needles
            registry._pattern = trie

    leaky = f"{text} token ghp_{'a1' * 18} from {names[0]}."
    for body, found in ((text, 0), (leaky, 2)):
        results = [scan_with(variant, body) for variant in variants]
        assert all(r == results[0] for r in results), results
        assert len(results[0]) == found, results

    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant, values in times.items():
            values.append(per_scan_us(functools.partial(scan_with, variant, text), args.repeat))
    print(f"prompt {len(text)} chars, {args.tenants} tenants, {args.rounds} rounds")
    print("| variant | µs per scan, median (min to max) |")
    print("| --- | ---: |")
    for variant, values in times.items():
        low, high = min(values), max(values)
        print(f"| {variant} | {statistics.median(values):.0f} ({low:.0f} to {high:.0f}) |")
    before, now = times[next(iter(variants))], times[list(variants)[-1]]
    ratio = statistics.median(n / b for n, b in zip(now, before, strict=True))
    print(f"now ÷ before, median of the rounds' ratios: {ratio:.2f}")


if __name__ == "__main__":
    main()
