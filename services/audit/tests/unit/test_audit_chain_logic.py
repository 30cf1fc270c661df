"""The chain's pure logic: canonical content, hashing, the verifier, CSV neutralisation."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from tenantry_audit.chain import (
    GENESIS_HASH,
    ChainEntry,
    ChainVerifier,
    RecordContent,
    canonical_time,
    link_hash,
)
from tenantry_audit.export import csv_header, csv_rows, jsonl_rows
from tenantry_audit.service import lifecycle_ack
from tenantry_common.events import (
    AuditRecorded,
    AuditStatus,
    AuditType,
    LifecycleAction,
    TenantOffboarded,
)

pytestmark = pytest.mark.unit

TENANT = uuid.UUID("11111111-1111-4111-8111-111111111111")
NOW = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _event(n: int, **fields: object) -> AuditRecorded:
    values: dict[str, object] = {
        "event_id": uuid.uuid5(TENANT, str(n)),
        "tenant_id": TENANT,
        "audit_type": AuditType.API_CALL,
        "source": "edge",
        "resource_type": "chat",
        "resource_id": str(n),
        "action": "ask",
        "status": AuditStatus.SUCCESS,
        "occurred_at": NOW,
        "details": {"b": 2, "a": 1},
    }
    values.update(fields)
    return AuditRecorded.model_validate(values)


def _chain(count: int) -> list[ChainEntry]:
    prev, entries = GENESIS_HASH, []
    for n in range(1, count + 1):
        content = RecordContent.from_event(_event(n), sequence=n, recorded_at=NOW)
        chash = content.content_hash()
        link = link_hash(prev, n, chash)
        entries.append(ChainEntry(n, chash, prev, link, content))
        prev = link
    return entries


def _walk(entries: list[ChainEntry], **start: object) -> ChainVerifier:
    verifier = ChainVerifier(**start)  # type: ignore[arg-type]
    for entry in entries:
        if verifier.feed(entry):
            break
    return verifier


def test_canonical_content_is_stable_across_key_order_and_time_zones() -> None:
    a = RecordContent.from_event(_event(1), sequence=1, recorded_at=NOW)
    shifted = NOW.astimezone(timezone(timedelta(hours=5)))
    b = RecordContent.from_event(
        _event(1, details={"a": 1, "b": 2}, occurred_at=shifted),
        sequence=1,
        recorded_at=shifted,
    )
    assert a.content_hash() == b.content_hash()
    assert a.details_json == '{"a":1,"b":2}'
    assert canonical_time(shifted) == "2025-03-01T12:00:00.123456Z"


def test_every_field_and_the_position_are_covered_by_the_content_hash() -> None:
    base = RecordContent.from_event(_event(1), sequence=1, recorded_at=NOW)
    changes = {
        "tenant_id": uuid.uuid4(),
        "sequence": 2,
        "event_id": uuid.uuid4(),
        "occurred_at": NOW + timedelta(microseconds=1),
        "recorded_at": NOW + timedelta(microseconds=1),
        "audit_type": "deletion",
        "source": "x",
        "actor": "x",
        "resource_type": "x",
        "resource_id": "x",
        "action": "x",
        "status": "failure",
        "error": "x",
        "ip_address": "x",
        "user_agent": "x",
        "details_json": "{}",
    }
    assert set(changes) == set(RecordContent.__dataclass_fields__)
    for name, value in changes.items():
        assert replace(base, **{name: value}).content_hash() != base.content_hash(), name


def test_nul_characters_are_replaced_before_hashing() -> None:
    content = RecordContent.from_event(
        _event(1, user_agent="a\x00b", details={"k\x00": "v\x00"}), sequence=1, recorded_at=NOW
    )
    assert content.user_agent == "a\ufffdb"
    assert "\x00" not in content.details_json


def test_nan_details_are_refused() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        RecordContent.from_event(
            _event(1, details={"x": float("nan")}), sequence=1, recorded_at=NOW
        )


def test_an_intact_chain_verifies_to_its_head() -> None:
    entries = _chain(5)
    verifier = _walk(entries)
    assert verifier.finish(head_sequence=5, head_hash=entries[-1].hash) is None
    assert verifier.checked == 5


def test_a_gap_is_reported_at_the_missing_sequence() -> None:
    entries = _chain(5)
    broken = _walk(entries[:2] + entries[3:]).broken
    assert broken is not None
    assert broken.sequence == 3
    assert "missing" in broken.reason


def test_a_missing_tail_is_reported_against_the_head() -> None:
    entries = _chain(5)
    verifier = _walk(entries[:3])
    broken = verifier.finish(head_sequence=5, head_hash=entries[-1].hash)
    assert broken is not None
    assert broken.sequence == 4


def test_a_forged_head_hash_is_reported() -> None:
    entries = _chain(3)
    broken = _walk(entries).finish(head_sequence=3, head_hash="f" * 64)
    assert broken is not None
    assert broken.sequence == 3


def test_a_tombstone_carries_the_chain_across_a_removed_record() -> None:
    entries = _chain(4)
    entries[1] = ChainEntry(2, entries[1].content_hash)  # content gone, position kept
    verifier = _walk(entries)
    assert verifier.broken is None
    assert verifier.finish(head_sequence=4, head_hash=entries[-1].hash) is None


def test_a_walk_can_start_from_a_retention_checkpoint() -> None:
    entries = _chain(5)
    verifier = _walk(entries[2:], start_sequence=2, start_hash=entries[1].hash)
    assert verifier.finish(head_sequence=5, head_hash=entries[-1].hash) is None
    wrong = _walk(entries[2:], start_sequence=2, start_hash=GENESIS_HASH)
    assert wrong.broken is not None
    assert wrong.broken.sequence == 3


def _row(**overrides: object) -> dict[str, object]:
    content = RecordContent.from_event(_event(1), sequence=1, recorded_at=NOW)
    row: dict[str, object] = {
        name: getattr(content, name) for name in RecordContent.__dataclass_fields__
    }
    row |= {"hash": "a" * 64}
    row |= overrides
    return row


def test_csv_rows_quote_every_cell_and_neutralise_formulas() -> None:
    body = (csv_header() + csv_rows([_row(actor="=HYPERLINK(1)", error=None)])).decode()
    parsed = list(csv.DictReader(io.StringIO(body)))
    assert parsed[0]["user_id"] == "'=HYPERLINK(1)"
    assert parsed[0]["error"] == ""
    assert parsed[0]["timestamp"] == "2025-03-01T12:00:00.123456Z"
    assert body.splitlines()[1].startswith('"')


def test_jsonl_rows_keep_values_and_details_as_an_object() -> None:
    line = json.loads(jsonl_rows([_row(actor="=x")]))
    assert line["user_id"] == "=x"
    assert line["details"] == {"a": 1, "b": 2}
    assert line["sequence"] == 1


def test_offboarding_is_acknowledged_without_deleting_anything() -> None:
    event = TenantOffboarded(tenant_id=TENANT, tenant_name="acme")
    ack = lifecycle_ack(event=event)
    assert ack is not None
    assert (ack.service, ack.action, ack.succeeded) == ("audit", LifecycleAction.OFFBOARDED, True)
    assert "retention" in ack.detail
    again = lifecycle_ack(event=event)
    assert again is not None
    assert again.event_id == ack.event_id, "a redelivery yields the same ack id"
