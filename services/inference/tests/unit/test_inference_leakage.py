"""The leakage detector: other tenants' ids and names, secrets, redaction, streamed answers."""

from __future__ import annotations

import random
import re
import uuid

import pytest
from tenantry_common.events import LeakagePolicy
from tenantry_inference.leakage import (
    _SECRET_PATTERNS,
    FindingKind,
    LeakageBlocked,
    LeakageDetector,
    StreamGuard,
    TenantRegistry,
    luhn_valid,
    redact,
)

pytestmark = pytest.mark.unit

ME = uuid.uuid4()
OTHER = uuid.uuid4()
TWIN = uuid.uuid4()


@pytest.fixture
def detector() -> LeakageDetector:
    registry = TenantRegistry()
    registry.upsert(ME, "Acme Corp")
    registry.upsert(OTHER, "Globex")
    registry.upsert(TWIN, "Acme")
    return LeakageDetector(registry)


def _kinds(detector: LeakageDetector, text: str) -> list[FindingKind]:
    return [f.kind for f in detector.scan(text, tenant_id=ME)]


def test_other_tenants_ids_are_found_with_or_without_dashes(detector: LeakageDetector) -> None:
    assert _kinds(detector, f"see {OTHER} now") == [FindingKind.OTHER_TENANT_ID]
    assert _kinds(detector, f"see {OTHER.hex.upper()}") == [FindingKind.OTHER_TENANT_ID]
    assert _kinds(detector, f"my own id {ME}") == []
    assert _kinds(detector, f"an unknown id {uuid.uuid4()}") == []


def test_other_tenants_names_are_found_but_never_the_own_name(detector: LeakageDetector) -> None:
    assert _kinds(detector, "Globex said hello") == [FindingKind.OTHER_TENANT_NAME]
    assert _kinds(detector, "GLOBEX  said") == [FindingKind.OTHER_TENANT_NAME]
    assert _kinds(detector, "globexes are not names") == []
    # "Acme" is another tenant, but inside our own "Acme Corp" it is our name.
    assert _kinds(detector, "Welcome to Acme Corp support") == []
    assert _kinds(detector, "Acme is someone else") == [FindingKind.OTHER_TENANT_NAME]


def test_removed_tenants_are_no_longer_flagged(detector: LeakageDetector) -> None:
    detector.registry.remove(OTHER)
    assert _kinds(detector, f"Globex {OTHER}") == []


#: One text per secret pattern (and a few spellings), with the kind it must be found as.
SECRETS: list[tuple[str, FindingKind]] = [
    ("key sk-proj-abcdefghijklmnopqrstuvwx1234", FindingKind.API_KEY),
    ("stripe sk_live_" + "a1B2" * 5, FindingKind.API_KEY),
    ("restricted rk_test_" + "Zz09" * 4, FindingKind.API_KEY),
    ("AKIAIOSFODNN7EXAMPLE is aws", FindingKind.API_KEY),
    ("session ASIAIOSFODNN7EXAMPLE", FindingKind.API_KEY),
    ("maps AIza" + "Sy-_0aB" * 5, FindingKind.API_KEY),
    ("ghp_" + "a1" * 18 + " token", FindingKind.ACCESS_TOKEN),
    ("ghs_" + "b2" * 18, FindingKind.ACCESS_TOKEN),
    ("github_pat_" + "11AB_cd" * 4, FindingKind.ACCESS_TOKEN),
    ("slack xoxb-1234567890-abcdef", FindingKind.ACCESS_TOKEN),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz.123", FindingKind.ACCESS_TOKEN),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        FindingKind.JWT,
    ),
    ("-----BEGIN RSA PRIVATE KEY-----\nMII", FindingKind.PRIVATE_KEY),
    ("password = hunter22", FindingKind.CREDENTIAL),
    ("PASSWORD: hunter22", FindingKind.CREDENTIAL),
    # Unicode case folding: a long s (U+017F) is an "s" to a case-insensitive pattern.
    ("pa\u017f\u017fword=hunter22", FindingKind.CREDENTIAL),
    ("card 4111 1111 1111 1111 exp 12/29", FindingKind.CARD_NUMBER),
    ("card 5500-0000-0000-0004", FindingKind.CARD_NUMBER),
]


@pytest.mark.parametrize(("text", "kind"), SECRETS)
def test_secrets_are_found(detector: LeakageDetector, text: str, kind: FindingKind) -> None:
    assert _kinds(detector, text) == [kind]
    # The same secret deep inside a long, ordinary text (a RAG prompt), and scanned from an
    # offset as a streamed answer is: still found, wherever the text starts.
    filler = "Refunds take five business days. " * 60
    assert _kinds(detector, filler + text + " " + filler) == [kind]
    assert [f.kind for f in detector.scan(filler + text, tenant_id=ME, start=len(filler))] == [kind]


def test_every_secret_pattern_runs_on_texts_holding_its_needles() -> None:
    """A pattern with needles is skipped on texts without them: each match must hold one."""
    for secret in _SECRET_PATTERNS:
        matches = [m.group() for text, _ in SECRETS for m in secret.pattern.finditer(text)]
        assert matches, f"no sample for {secret.pattern.pattern!r}"
        for matched in matches:
            assert not secret.needles or any(n in matched for n in secret.needles), matched


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112",  # fails the Luhn check
        "call 555-0100 or 2024-05-01",
        "the sk-short key",
        "a password reset link",
        "refunds take 5 business days",
    ],
)
def test_ordinary_text_is_not_flagged(detector: LeakageDetector, text: str) -> None:
    assert _kinds(detector, text) == []


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_redaction_replaces_every_finding(detector: LeakageDetector) -> None:
    text = f"Globex ({OTHER}) uses sk-abcdefghijklmnopqrstuvwxyz and card 4111111111111111."
    out = redact(text, detector.scan(text, tenant_id=ME))
    assert out == (
        "[REDACTED:other_tenant_name] ([REDACTED:other_tenant_id]) uses [REDACTED:api_key] "
        "and card [REDACTED:card_number]."
    )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 3, 7])
def test_streamed_redaction_never_releases_part_of_a_secret(
    detector: LeakageDetector, size: int
) -> None:
    key = "sk-" + "Z" * 40
    text = f"Here is the answer. The key is {key} and Globex is a competitor. Done now."
    guard = StreamGuard(detector=detector, tenant_id=ME, policy=LeakagePolicy.REDACT, holdback=12)
    released = [guard.feed(p) for p in _pieces(text, size)]
    released.append(guard.finish())
    assert "".join(released) == guard.answer
    assert guard.answer == (
        "Here is the answer. The key is [REDACTED:api_key] and [REDACTED:other_tenant_name] "
        "is a competitor. Done now."
    )
    assert not any("ZZZ" in r or "Glob" in r for r in released)
    assert len([r for r in released if r]) > 3, "text is released as it streams, not at the end"


def test_streamed_block_stops_before_the_secret_is_released(detector: LeakageDetector) -> None:
    text = "Sure. The card is 4111 1111 1111 1111 as requested."
    guard = StreamGuard(detector=detector, tenant_id=ME, policy=LeakagePolicy.BLOCK, holdback=32)
    released: list[str] = []

    def run() -> None:
        for piece in _pieces(text, 2):
            released.append(guard.feed(piece))
        guard.finish()

    with pytest.raises(LeakageBlocked) as blocked:
        run()
    assert blocked.value.stage == "answer"
    assert [f.kind for f in blocked.value.findings] == [FindingKind.CARD_NUMBER]
    assert "4111" not in "".join(released)


def test_streamed_names_are_held_until_they_cannot_become_another_tenants_name(
    detector: LeakageDetector,
) -> None:
    # No fixed holdback: only the name-prefix hold keeps "Glob…" back.
    guard = StreamGuard(detector=detector, tenant_id=ME, policy=LeakagePolicy.REDACT, holdback=0)
    released = [
        guard.feed(p) for p in ["We ", "met ", "Glo", "bex ", "today. ", "Acme ", "Corp ", "rocks."]
    ]
    released.append(guard.finish())
    assert "".join(released) == guard.answer
    assert guard.answer == "We met [REDACTED:other_tenant_name] today. Acme Corp rocks."
    assert not any("Glo" in r for r in released)


def test_streaming_the_own_name_is_not_blocked_while_it_could_be_another_name(
    detector: LeakageDetector,
) -> None:
    # "Acme" alone is another tenant; "Acme Corp" is us. Blocking must wait for the next word.
    guard = StreamGuard(detector=detector, tenant_id=ME, policy=LeakagePolicy.BLOCK, holdback=0)
    out = [guard.feed(p) for p in ["Welcome to ", "Acme", " Corp", " support."]]
    out.append(guard.finish())
    assert "".join(out) == "Welcome to Acme Corp support."


def test_a_secret_after_an_already_released_label_is_still_withheld(
    detector: LeakageDetector,
) -> None:
    token = "abcdefghijklmnopqrstuvwxyz0123456789"
    guard = StreamGuard(detector=detector, tenant_id=ME, policy=LeakagePolicy.REDACT, holdback=0)
    out = [
        guard.feed("Use Bearer "),
        guard.feed(token[:10]),
        guard.feed(token[10:]),
        guard.feed(" ok"),
    ]
    out.append(guard.finish())
    assert "".join(out) == guard.answer
    assert "abcdefghij" not in guard.answer
    assert guard.answer.startswith("Use Bearer ")
    assert "[REDACTED:access_token]" in guard.answer


def test_a_private_key_block_is_redacted_whole(detector: LeakageDetector) -> None:
    text = "key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\nbye"
    out = redact(text, detector.scan(text, tenant_id=ME))
    assert out == "key:\n[REDACTED:private_key]\nbye"


def test_a_repeated_scan_is_remembered_until_the_registry_changes(
    detector: LeakageDetector,
) -> None:
    prompt = "You answer for Acme Corp. Never mention Initech or Globex."
    first = detector.scan_repeated(prompt, tenant_id=ME)
    assert [f.kind for f in first] == [FindingKind.OTHER_TENANT_NAME]  # Globex
    assert detector.scan_repeated(prompt, tenant_id=ME) is first, "not scanned again"
    newcomer = uuid.uuid4()
    detector.registry.upsert(newcomer, "Initech")
    again = detector.scan_repeated(prompt, tenant_id=ME)
    assert [prompt[f.start : f.end] for f in again] == ["Initech", "Globex"]
    detector.registry.remove(newcomer)
    assert [prompt[f.start : f.end] for f in detector.scan_repeated(prompt, tenant_id=ME)] == [
        "Globex"
    ]
    # Remembered per tenant: for Globex, its own name is no finding, Acme Corp's is.
    assert [prompt[f.start : f.end] for f in detector.scan_repeated(prompt, tenant_id=OTHER)] == [
        "Acme Corp"
    ]


def _leftmost_longest(names: list[str], text: str) -> list[tuple[int, int]]:
    """The oracle: every place each name occurs on its own (overlaps included), then, left to
    right, the longest match at each start that does not overlap the one taken before it."""
    spans: set[tuple[int, int]] = set()
    for name in names:
        body = r"\s+".join(re.escape(word) for word in name.casefold().split())
        for m in re.finditer(rf"(?=((?<!\w){body}(?!\w)))", text, re.IGNORECASE):
            spans.add((m.start(1), m.end(1)))
    taken: list[tuple[int, int]] = []
    for start, end in sorted(spans, key=lambda span: (span[0], -span[1])):
        if not taken or start >= taken[-1][1]:
            taken.append((start, end))
    return taken


@pytest.mark.parametrize("seed", range(25))
def test_the_name_trie_finds_what_each_name_alone_would(seed: int) -> None:
    """Names sharing prefixes (one continuing another, one word or several), texts with mixed
    case, whitespace and punctuation: the trie-shaped pattern matches where the names would,
    the longest first."""
    rng = random.Random(seed)
    parts = ["ab", "abc", "abd", "b", "ba", "bab", "ca", "Äb"]
    names = sorted(
        {" ".join(rng.choice(parts) for _ in range(rng.randint(1, 3))) for _ in range(12)}
    )
    names = [name for name in names if len(name) >= 3]
    registry = TenantRegistry()
    for name in names:
        registry.upsert(uuid.uuid4(), name)
    tokens = [*parts, *names, " ", "  ", "\n\t", ",", "-", ".", "x"]
    text = "".join(
        token.upper() if rng.random() < 0.2 else token
        for token in (rng.choice(tokens) for _ in range(200))
    )
    pattern, _owners = registry.name_pattern()
    assert [(m.start(), m.end()) for m in pattern.finditer(text)] == _leftmost_longest(names, text)
