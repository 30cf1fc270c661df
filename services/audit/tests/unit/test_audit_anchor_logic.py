"""Verifying a chain against published anchors (pure logic): a rewritten tail, a truncated
tail, disagreeing anchors and a forged checkpoint are found; anchors behind retention are not
counted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from tenantry_audit.chain import (
    GENESIS_HASH,
    Anchor,
    ChainEntry,
    ChainVerifier,
    RecordContent,
    link_hash,
)
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType

pytestmark = pytest.mark.unit

TENANT = uuid.UUID("22222222-2222-4222-8222-222222222222")
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _chain(
    count: int, *, action: str = "ask", rewritten_from: int | None = None
) -> list[ChainEntry]:
    """A consistent chain; from ``rewritten_from`` on, records say something else (a forger's
    chain: internally consistent, head included)."""
    prev, entries = GENESIS_HASH, []
    for n in range(1, count + 1):
        event = AuditRecorded(
            event_id=uuid.uuid5(TENANT, str(n)),
            tenant_id=TENANT,
            audit_type=AuditType.API_CALL,
            source="edge",
            resource_type="chat",
            resource_id=str(n),
            action="forged" if rewritten_from is not None and n >= rewritten_from else action,
            status=AuditStatus.SUCCESS,
            occurred_at=NOW,
        )
        content = RecordContent.from_event(event, sequence=n, recorded_at=NOW)
        chash = content.content_hash()
        link = link_hash(prev, n, chash)
        entries.append(ChainEntry(n, chash, prev, link, content))
        prev = link
    return entries


def _verify(entries: list[ChainEntry], anchors: list[Anchor], **start: object) -> ChainVerifier:
    verifier = ChainVerifier(anchors=anchors, **start)  # type: ignore[arg-type]
    for entry in entries:
        if verifier.feed(entry):
            break
    last = entries[-1] if entries else None
    verifier.finish(
        head_sequence=last.sequence if last else None, head_hash=last.hash if last else None
    )
    return verifier


def _anchor(entry: ChainEntry) -> Anchor:
    assert entry.hash is not None
    return Anchor(sequence=entry.sequence, head_hash=entry.hash)


def test_a_chain_through_its_anchored_heads_is_ok_and_counts_them() -> None:
    chain = _chain(8)
    verifier = _verify(chain, [_anchor(chain[2]), _anchor(chain[5]), _anchor(chain[5])])
    assert verifier.broken is None
    assert verifier.anchors_checked == 2


def test_a_rewritten_tail_with_its_head_is_found_at_the_first_anchor_after_the_rewrite() -> None:
    original = _chain(8)
    forged = _chain(8, rewritten_from=4)
    # Without anchors the forged chain is perfectly consistent.
    plain = ChainVerifier()
    for entry in forged:
        assert plain.feed(entry) is None
    assert plain.finish(head_sequence=8, head_hash=forged[-1].hash) is None

    verifier = _verify(forged, [_anchor(original[1]), _anchor(original[5]), _anchor(original[7])])
    assert verifier.broken is not None
    assert verifier.broken.sequence == 6
    assert "anchored head" in verifier.broken.reason


def test_a_truncated_tail_is_found_when_an_anchor_lies_beyond_the_end() -> None:
    original = _chain(8)
    verifier = _verify(original[:5], [_anchor(original[2]), _anchor(original[7])])
    assert verifier.broken is not None
    assert verifier.broken.sequence == 6
    assert "anchored at record 8" in verifier.broken.reason


def test_a_whole_chain_deleted_with_its_head_is_found() -> None:
    original = _chain(3)
    verifier = _verify([], [_anchor(original[2])])
    assert verifier.broken is not None
    assert verifier.broken.sequence == 1


def test_disagreeing_anchors_for_one_record_are_a_break() -> None:
    original, forged = _chain(5), _chain(5, rewritten_from=2)
    verifier = _verify(forged, [_anchor(original[3]), _anchor(forged[3])])
    assert verifier.broken is not None
    assert verifier.broken.sequence == 4
    assert "disagree" in verifier.broken.reason


def test_anchors_behind_the_retention_checkpoint_are_not_counted_and_a_forged_one_is_found() -> (
    None
):
    chain = _chain(6)
    assert chain[2].hash is not None
    start = {"start_sequence": 3, "start_hash": chain[2].hash}
    ok = _verify(chain[3:], [_anchor(chain[0]), _anchor(chain[2]), _anchor(chain[4])], **start)
    assert ok.broken is None
    assert ok.anchors_checked == 2, "the checkpoint's own anchor and record 5's"
    forged = _verify(chain[3:], [_anchor(chain[2])], start_sequence=3, start_hash="f" * 64)
    assert forged.broken is not None
    assert forged.broken.sequence == 3
    assert "retention checkpoint" in forged.broken.reason
