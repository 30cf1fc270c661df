"""What the messaging tests publish: a small, valid event of a tenant, told apart by its number."""

from __future__ import annotations

import uuid

from tenantry_common.events import AuditRecorded, AuditStatus, AuditType


def audit_event(tenant: uuid.UUID, n: int, resource: str | None = None) -> AuditRecorded:
    """An ``AuditRecorded`` whose ``resource_id`` is ``resource`` or the number ``n``."""
    return AuditRecorded(
        tenant_id=tenant,
        audit_type=AuditType.API_CALL,
        source="test",
        resource_type="thing",
        resource_id=resource or str(n),
        action="poke",
        status=AuditStatus.SUCCESS,
    )
