"""The one home of tenant scoping for shared stores: Redis keys are built here and nowhere else.

(Vector namespaces live in retrieval, Postgres scoping in each owning service's repository —
each in exactly one function.)
"""

from __future__ import annotations

import uuid

KEY_PREFIX = "tenantry"


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
