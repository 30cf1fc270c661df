"""The per-tenant hash chain: canonical record content, hashes, and the verifier.

A record's ``content_hash`` is SHA-256 over a canonical JSON of everything it says (including
its tenant and sequence number). Its ``hash`` links it to its predecessor:
``SHA-256(prev_hash ":" sequence ":" content_hash)``. The first record of a tenant links to
``GENESIS_HASH``; after retention removed a prefix of the chain it links to the checkpoint's
hash. A record removed from the middle (expired but behind a younger one) leaves a tombstone
with its sequence and content hash, so the chain can still be walked across it.

Pure logic: no database, so it can be unit-tested and reused by the CLI and the API.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenantry_common.events import AuditRecorded

GENESIS_HASH = "0" * 64
CANONICAL_VERSION = 1


def canonical_time(value: datetime) -> str:
    """UTC, microseconds, ``Z``: the one text form a timestamp takes inside a hash."""
    if value.tzinfo is None:
        raise ValueError("timestamps in the audit chain must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text, no NaN: the same bytes for the same value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _clean(text: str | None) -> str | None:
    # Postgres text cannot hold NUL; an audit record must not be lost over it, so the
    # character is replaced (before hashing, so the chain covers what is stored).
    return None if text is None else text.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class RecordContent:
    """What one audit record says, as stored (and as hashed)."""

    tenant_id: uuid.UUID
    sequence: int
    event_id: uuid.UUID
    occurred_at: datetime
    recorded_at: datetime
    audit_type: str
    source: str
    actor: str | None
    resource_type: str
    resource_id: str
    action: str
    status: str
    error: str | None
    ip_address: str | None
    user_agent: str | None
    details_json: str

    @classmethod
    def from_event(
        cls, event: AuditRecorded, *, sequence: int, recorded_at: datetime
    ) -> RecordContent:
        """The content of the record an event becomes at ``sequence``."""
        details = {
            _clean(k) or "": _clean(v) if isinstance(v, str) else v
            for k, v in event.details.items()
        }
        return cls(
            tenant_id=event.tenant_id,
            sequence=sequence,
            event_id=event.event_id,
            occurred_at=event.occurred_at.astimezone(UTC),
            recorded_at=recorded_at.astimezone(UTC),
            audit_type=event.audit_type.value,
            source=_clean(event.source) or "",
            actor=_clean(event.actor),
            resource_type=_clean(event.resource_type) or "",
            resource_id=_clean(event.resource_id) or "",
            action=_clean(event.action) or "",
            status=event.status.value,
            error=_clean(event.error),
            ip_address=_clean(event.ip_address),
            user_agent=_clean(event.user_agent),
            details_json=canonical_json(details),
        )

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RecordContent:
        """The content of a stored row (column names as in ``models.records``)."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def canonical(self) -> str:
        """The canonical serialisation the content hash covers."""
        return canonical_json(
            {
                "v": CANONICAL_VERSION,
                "tenant_id": str(self.tenant_id),
                "sequence": self.sequence,
                "event_id": str(self.event_id),
                "occurred_at": canonical_time(self.occurred_at),
                "recorded_at": canonical_time(self.recorded_at),
                "audit_type": self.audit_type,
                "source": self.source,
                "actor": self.actor,
                "resource_type": self.resource_type,
                "resource_id": self.resource_id,
                "action": self.action,
                "status": self.status,
                "error": self.error,
                "ip_address": self.ip_address,
                "user_agent": self.user_agent,
                "details": self.details_json,
            }
        )

    def content_hash(self) -> str:
        """SHA-256 of the canonical content, hex."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()


def link_hash(prev_hash: str, sequence: int, content_hash: str) -> str:
    """A record's chain hash: its content bound to its position and its predecessor."""
    return hashlib.sha256(f"{prev_hash}:{sequence}:{content_hash}".encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChainEntry:
    """One position of a stored chain: a record, or the tombstone of a removed one."""

    sequence: int
    content_hash: str
    prev_hash: str | None = None
    hash: str | None = None
    content: RecordContent | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.content is None


@dataclass(frozen=True)
class Anchor:
    """A chain head published earlier (``AuditChainAnchored``): ``sequence`` had ``head_hash``."""

    sequence: int
    head_hash: str


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the stored chain does not hold."""

    sequence: int
    reason: str


class ChainVerifier:
    """Walks a chain in sequence order, one entry at a time (bounded memory)."""

    def __init__(
        self,
        *,
        start_sequence: int = 0,
        start_hash: str = GENESIS_HASH,
        anchors: Iterable[Anchor] | None = None,
    ) -> None:
        self.last_sequence = start_sequence
        self.last_hash = start_hash
        self.checked = 0
        self.broken: ChainBreak | None = None
        #: Anchored heads by sequence (None: not checking against anchors).
        self.anchors: dict[int, set[str]] | None = None
        #: Anchors compared with the walked chain; those behind the retention checkpoint
        #: (their records are gone) cannot be compared and are not counted.
        self.anchors_checked = 0
        if anchors is not None:
            self.anchors = {}
            for anchor in anchors:
                self.anchors.setdefault(anchor.sequence, set()).add(anchor.head_hash)
            self._check_anchor(start_sequence, start_hash, what="the retention checkpoint")

    def feed(self, entry: ChainEntry) -> ChainBreak | None:
        """Check the next entry; returns (and keeps) the first break found."""
        if self.broken is not None:
            return self.broken
        expected = self.last_sequence + 1
        if entry.sequence != expected:
            reason = (
                f"record {expected} is missing (next stored is {entry.sequence})"
                if entry.sequence > expected
                else f"sequence {entry.sequence} is out of order"
            )
            return self._break(expected, reason)
        if entry.content is None:
            computed = link_hash(self.last_hash, entry.sequence, entry.content_hash)
        else:
            if entry.prev_hash != self.last_hash:
                return self._break(
                    entry.sequence,
                    "prev_hash does not match the preceding record "
                    "(a record before it was altered, removed or reordered)",
                )
            content_hash = entry.content.content_hash()
            if content_hash != entry.content_hash:
                return self._break(
                    entry.sequence, "content does not match its hash (record altered)"
                )
            computed = link_hash(self.last_hash, entry.sequence, content_hash)
            if computed != entry.hash:
                return self._break(entry.sequence, "chain hash does not match (record altered)")
        self.last_sequence = entry.sequence
        self.last_hash = computed
        self.checked += 1
        return self._check_anchor(entry.sequence, computed, what="the chain")

    def _check_anchor(self, sequence: int, chain_hash: str, *, what: str) -> ChainBreak | None:
        # A rewrite of the whole tail (head row included) is consistent inside the database;
        # only a head published before the rewrite, kept outside it, tells the difference.
        if self.anchors is None or sequence not in self.anchors or sequence == 0:
            return None
        anchored = self.anchors[sequence]
        self.anchors_checked += 1
        if len(anchored) > 1:
            return self._break(
                sequence,
                f"anchors published for record {sequence} disagree "
                "(the chain was rewritten after it was anchored)",
            )
        if chain_hash not in anchored:
            return self._break(
                sequence,
                f"{what} at record {sequence} does not match its anchored head "
                "(this record or one before it was rewritten)",
            )
        return None

    def finish(self, *, head_sequence: int | None, head_hash: str | None) -> ChainBreak | None:
        """Check that the walk ended at the chain head the database recorded."""
        if self.broken is not None:
            return self.broken
        if head_sequence is None or head_hash is None:
            if self.checked:
                return self._break(1, "records exist but the chain head is missing")
            return self._check_anchors_beyond_end()
        if self.last_sequence < head_sequence:
            return self._break(
                self.last_sequence + 1,
                f"records {self.last_sequence + 1}..{head_sequence} are missing "
                "(the chain head is further on)",
            )
        if self.last_sequence > head_sequence:
            return self._break(head_sequence + 1, "records exist beyond the chain head")
        if self.last_hash != head_hash:
            return self._break(
                head_sequence, "the chain head's hash does not match the last record"
            )
        return self._check_anchors_beyond_end()

    def _check_anchors_beyond_end(self) -> ChainBreak | None:
        beyond = [s for s in self.anchors or () if s > self.last_sequence]
        if not beyond:
            return None
        return self._break(
            self.last_sequence + 1,
            f"a head was anchored at record {max(beyond)} but the chain ends at "
            f"{self.last_sequence} (records removed from the tail)",
        )

    def _break(self, sequence: int, reason: str) -> ChainBreak:
        self.broken = ChainBreak(sequence=sequence, reason=reason)
        return self.broken
