"""Identifiers: UUIDs everywhere, UTC time, and ids derived deterministically for idempotency."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

#: Tenant id used for events that belong to no tenant (e.g. a refused, unverifiable token).
PLATFORM_TENANT_ID = uuid.UUID(int=0)

_NAMESPACE = uuid.UUID("6f1f3b2e-2a7c-4f7e-9b1e-7e3a5d0c9a11")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def derived_id(source_id: uuid.UUID, purpose: str) -> uuid.UUID:
    """A stable id derived from another id, so a redelivered input yields the same output id."""
    return uuid.uuid5(_NAMESPACE, f"{purpose}:{source_id}")
