"""The one home of tenant scoping for shared stores: Redis keys are built here and nowhere else.

(Vector namespaces live in retrieval, Postgres scoping in each owning service's repository —
each in exactly one function.)
"""

from __future__ import annotations

import hashlib
import uuid

KEY_PREFIX = "tenantry"


def hashed_part(name: str) -> str:
    """A key part standing for a name of any length (a client id, an end user's id): the first
    32 hex digits of its SHA-256, so the key stays short and the name is not stored in it."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def tenant_key(tenant_id: uuid.UUID, *parts: str) -> str:
    """A Redis key inside one tenant's keyspace: ``tenantry:{<tenant uuid>}:<parts>``.

    The tenant id must be a UUID (from a verified token or an event), so nothing a tenant
    sends can name another tenant's key; the braces keep a tenant's keys in one cluster slot,
    which lets a Lua script touch several of them atomically.
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_key needs a uuid.UUID tenant id")
    for part in parts:
        if not part or "{" in part or "}" in part:
            raise ValueError(f"bad key part {part!r}")
    return ":".join((KEY_PREFIX, "{" + str(tenant_id) + "}", *parts))
