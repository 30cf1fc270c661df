"""Every query of the edge's database, in one module.

Tenant scoping has one home: ``_scoped`` puts ``tenant_id = :tenant`` in the WHERE clause of
every statement on a tenant table. The only statements without it are the operator's listing
of tenants and the sweep for stalled onboardings, both named as such.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from tenantry_common.ids import utcnow

from tenantry_auth.models import (
    Client,
    Document,
    DocumentStatus,
    Feedback,
    LifecycleAck,
    SigningKey,
    Tenant,
    TenantConfigVersion,
)

TenantTable = TypeVar(
    "TenantTable", Tenant, Client, TenantConfigVersion, LifecycleAck, Document, Feedback
)


def _scoped(table: type[TenantTable], tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The WHERE clause that confines a statement to one tenant's rows."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return table.tenant_id == tenant_id


# --------------------------------------------------------------------------- signing keys


async def lock_signing_keys(*, session: AsyncSession) -> None:
    """Serialise key creation and rotation across replicas (transaction-scoped lock)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('tenantry-edge-keys'))"))


async def list_signing_keys(*, session: AsyncSession) -> list[SigningKey]:
    """All signing keys, oldest first."""
    rows = await session.scalars(select(SigningKey).order_by(SigningKey.created_at))
    return list(rows)


async def retire_signing_keys(*, session: AsyncSession, at: datetime) -> None:
    """Stop signing with every active key."""
    await session.execute(
        update(SigningKey).where(SigningKey.retired_at.is_(None)).values(retired_at=at)
    )


# --------------------------------------------------------------------------- tenants


async def get_tenant(*, session: AsyncSession, tenant_id: uuid.UUID) -> Tenant | None:
    """One tenant, or None."""
    return await session.scalar(select(Tenant).where(_scoped(Tenant, tenant_id)))


async def get_tenant_for_update(*, session: AsyncSession, tenant_id: uuid.UUID) -> Tenant | None:
    """One tenant, locked until the end of the transaction."""
    return await session.scalar(select(Tenant).where(_scoped(Tenant, tenant_id)).with_for_update())


async def list_all_tenants(*, session: AsyncSession, limit: int = 1000) -> list[Tenant]:
    """Operators' view across tenants (deliberately unscoped)."""
    rows = await session.scalars(select(Tenant).order_by(Tenant.created_at).limit(limit))
    return list(rows)


async def stalled_onboardings(
    *, session: AsyncSession, started_before: datetime
) -> list[uuid.UUID]:
    """Tenants still provisioning since before a moment (a cross-tenant sweep, unscoped)."""
    rows = await session.scalars(
        select(Tenant.tenant_id).where(
            Tenant.status == "provisioning", Tenant.created_at < started_before
        )
    )
    return list(rows)


async def set_tenant_status(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    status: str,
    only_from: Sequence[str],
    detail: str = "",
) -> bool:
    """Move a tenant to ``status`` if it is in one of ``only_from``; True when it moved."""
    result = await session.execute(
        update(Tenant)
        .where(_scoped(Tenant, tenant_id), Tenant.status.in_(list(only_from)))
        .values(status=status, status_detail=detail, updated_at=utcnow())
        .returning(Tenant.tenant_id)
    )
    return result.first() is not None


# --------------------------------------------------------------------------- clients


async def get_client(
    *, session: AsyncSession, tenant_id: uuid.UUID, client_id: str
) -> Client | None:
    """One client of a tenant."""
    return await session.scalar(
        select(Client).where(_scoped(Client, tenant_id), Client.client_id == client_id)
    )


async def list_clients(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[Client]:
    """A tenant's clients, oldest first."""
    rows = await session.scalars(
        select(Client).where(_scoped(Client, tenant_id)).order_by(Client.created_at)
    )
    return list(rows)


async def revoke_client(*, session: AsyncSession, tenant_id: uuid.UUID, client_id: str) -> bool:
    """Mark one client revoked; True when it existed and was active."""
    result = await session.execute(
        update(Client)
        .where(
            _scoped(Client, tenant_id), Client.client_id == client_id, Client.revoked_at.is_(None)
        )
        .values(revoked_at=utcnow())
        .returning(Client.client_id)
    )
    return result.first() is not None


async def revoke_all_clients(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    """Revoke every client of a tenant; returns their ids."""
    result = await session.execute(
        update(Client)
        .where(_scoped(Client, tenant_id), Client.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(Client.client_id)
    )
    return [r[0] for r in result]


async def upsert_client_secret(
    *, session: AsyncSession, tenant_id: uuid.UUID, client_id: str, role: str, secret_hash: str
) -> None:
    """Create a client, or give an existing one a new secret (un-revoking it): bootstrap only."""
    stmt = insert(Client).values(
        tenant_id=tenant_id,
        client_id=client_id,
        name="bootstrap operator",
        role=role,
        secret_hash=secret_hash,
        created_at=utcnow(),
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Client.tenant_id, Client.client_id],
            set_={"secret_hash": secret_hash, "role": role, "revoked_at": None},
            where=_scoped(Client, tenant_id),
        )
    )


async def access_state(
    *, session: AsyncSession, tenant_id: uuid.UUID, client_id: str | None
) -> tuple[str | None, bool]:
    """(tenant status or None, whether the client is revoked or unknown)."""
    tenant_status = await session.scalar(select(Tenant.status).where(_scoped(Tenant, tenant_id)))
    if client_id is None:
        return tenant_status, False
    revoked_at = await session.execute(
        select(Client.revoked_at).where(_scoped(Client, tenant_id), Client.client_id == client_id)
    )
    row = revoked_at.first()
    return tenant_status, row is None or row[0] is not None


async def revoked_client_ids(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    """The ids of a tenant's revoked clients (to rebuild the Redis mirror)."""
    rows = await session.scalars(
        select(Client.client_id).where(_scoped(Client, tenant_id), Client.revoked_at.is_not(None))
    )
    return list(rows)


# --------------------------------------------------------------------------- configuration


async def current_config(
    *, session: AsyncSession, tenant_id: uuid.UUID
) -> TenantConfigVersion | None:
    """The newest configuration version of a tenant."""
    return await session.scalar(
        select(TenantConfigVersion)
        .where(_scoped(TenantConfigVersion, tenant_id))
        .order_by(TenantConfigVersion.version.desc())
        .limit(1)
    )


async def config_history(
    *, session: AsyncSession, tenant_id: uuid.UUID, limit: int = 50, before: int | None = None
) -> list[TenantConfigVersion]:
    """A tenant's configuration versions, newest first (those older than ``before`` if given)."""
    query = select(TenantConfigVersion).where(_scoped(TenantConfigVersion, tenant_id))
    if before is not None:
        query = query.where(TenantConfigVersion.version < before)
    rows = await session.scalars(query.order_by(TenantConfigVersion.version.desc()).limit(limit))
    return list(rows)


async def add_config_version(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    version: int,
    config: dict[str, Any],
    changed_by: str,
) -> None:
    """Store a new configuration version (the primary key refuses a concurrent duplicate)."""
    session.add(
        TenantConfigVersion(
            tenant_id=tenant_id, version=version, config=config, changed_by=changed_by
        )
    )
    await session.flush()
    await session.execute(
        update(Tenant)
        .where(_scoped(Tenant, tenant_id))
        .values(config_version=version, updated_at=utcnow())
    )


# --------------------------------------------------------------------------- lifecycle acks


async def record_ack(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    action: str,
    service: str,
    succeeded: bool,
    detail: str,
    event_id: uuid.UUID,
) -> bool:
    """Store a service's acknowledgement once; True when it is new."""
    result = await session.execute(
        insert(LifecycleAck)
        .values(
            tenant_id=tenant_id,
            action=action,
            service=service,
            succeeded=succeeded,
            detail=detail[:2000],
            event_id=event_id,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(LifecycleAck.service)
    )
    return result.first() is not None


async def acks(*, session: AsyncSession, tenant_id: uuid.UUID, action: str) -> list[LifecycleAck]:
    """The acknowledgements a tenant's onboarding or offboarding has received."""
    rows = await session.scalars(
        select(LifecycleAck).where(_scoped(LifecycleAck, tenant_id), LifecycleAck.action == action)
    )
    return list(rows)


# --------------------------------------------------------------------------- documents


async def add_document(*, session: AsyncSession, document: Document) -> None:
    """Record a submitted document (metadata only)."""
    session.add(document)
    await session.flush()


#: A document that is not deleted (the only kind a tenant is shown or may change).
_LIVE_DOCUMENT = Document.status != DocumentStatus.DELETED.value


async def list_documents(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    limit: int,
    offset: int,
    status: DocumentStatus | None = None,
) -> tuple[list[Document], int]:
    """A page of a tenant's documents that are not deleted (and in ``status``, if given),
    newest first, and how many there are."""
    live = (
        _scoped(Document, tenant_id),
        _LIVE_DOCUMENT if status is None else Document.status == status.value,
    )
    rows = await session.scalars(
        select(Document)
        .where(*live)
        .order_by(Document.submitted_at.desc())
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(select(func.count()).select_from(Document).where(*live))
    return list(rows), int(total or 0)


async def live_document_ids(
    *, session: AsyncSession, tenant_id: uuid.UUID, document_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of ``document_ids`` are the tenant's documents that are not deleted."""
    found = await session.scalars(
        select(Document.document_id).where(
            _scoped(Document, tenant_id),
            _LIVE_DOCUMENT,
            Document.document_id.in_(document_ids),
        )
    )
    return set(found)


async def _update_document(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    only_if: ColumnElement[bool],
    **values: object,
) -> bool:
    """Change one of a tenant's documents if ``only_if`` holds; whether it did."""
    result = await session.execute(
        update(Document)
        .where(_scoped(Document, tenant_id), Document.document_id == document_id, only_if)
        .values(**values)
        .returning(Document.document_id)
    )
    return result.first() is not None


async def mark_document_indexed(
    *, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID, chunks: int
) -> bool:
    """Mark a submitted (or failed, then re-published) document indexed; False if it is
    unknown, deleted or already indexed."""
    return await _update_document(
        session=session,
        tenant_id=tenant_id,
        document_id=document_id,
        only_if=Document.status.in_((DocumentStatus.SUBMITTED.value, DocumentStatus.FAILED.value)),
        status=DocumentStatus.INDEXED.value,
        chunks=chunks,
        indexed_at=utcnow(),
        failed_at=None,
    )


async def mark_document_failed(
    *, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Mark a submitted document failed; False if it is unknown, deleted, indexed or failed."""
    return await _update_document(
        session=session,
        tenant_id=tenant_id,
        document_id=document_id,
        only_if=Document.status == DocumentStatus.SUBMITTED.value,
        status=DocumentStatus.FAILED.value,
        failed_at=utcnow(),
    )


async def get_document(
    *, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> Document | None:
    """A document of the tenant that is not deleted."""
    return await session.scalar(
        select(Document).where(
            _scoped(Document, tenant_id),
            Document.document_id == document_id,
            _LIVE_DOCUMENT,
        )
    )


async def mark_document_deleted(
    *, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Mark a live document deleted; True when it existed."""
    return await _update_document(
        session=session,
        tenant_id=tenant_id,
        document_id=document_id,
        only_if=_LIVE_DOCUMENT,
        status=DocumentStatus.DELETED.value,
        deleted_at=utcnow(),
    )


# --------------------------------------------------------------------------- feedback


async def put_feedback(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    request_id: uuid.UUID,
    subject: str,
    value: int,
    comment: str,
    end_user: str | None,
) -> Feedback:
    """Record a rating, or replace the one this subject gave the same answer before."""
    now = utcnow()
    return (
        await session.execute(
            insert(Feedback)
            .values(
                tenant_id=tenant_id,
                request_id=request_id,
                subject=subject,
                value=value,
                comment=comment,
                end_user=end_user,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=[Feedback.tenant_id, Feedback.request_id, Feedback.subject],
                set_={"value": value, "comment": comment, "end_user": end_user, "updated_at": now},
            )
            .returning(Feedback)
        )
    ).scalar_one()


async def list_feedback(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    since: datetime | None,
    before: datetime | None,
    limit: int,
) -> list[Feedback]:
    """A tenant's ratings, the latest first (by when they were last given)."""
    window = _feedback_window(tenant_id, since, before)
    rows = await session.scalars(
        select(Feedback).where(*window).order_by(Feedback.updated_at.desc()).limit(limit)
    )
    return list(rows)


def _feedback_window(
    tenant_id: uuid.UUID, since: datetime | None, before: datetime | None
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a tenant's ratings last given in ``[since, before)``."""
    window = [_scoped(Feedback, tenant_id)]
    if since is not None:
        window.append(Feedback.updated_at >= since)
    if before is not None:
        window.append(Feedback.updated_at < before)
    return window


async def feedback_summary(
    *, session: AsyncSession, tenant_id: uuid.UUID, since: datetime | None, before: datetime | None
) -> tuple[int, float | None, int, int]:
    """How many ratings, their mean value, how many above and below zero."""
    query = select(
        func.count(),
        func.avg(Feedback.value),
        func.count().filter(Feedback.value > 0),
        func.count().filter(Feedback.value < 0),
    ).where(*_feedback_window(tenant_id, since, before))
    count, mean, positive, negative = (await session.execute(query)).one()
    return int(count), float(mean) if mean is not None else None, int(positive), int(negative)


async def delete_feedback(*, session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Delete every rating of a tenant (offboarding); how many there were."""
    deleted = await session.scalars(
        delete(Feedback).where(_scoped(Feedback, tenant_id)).returning(Feedback.request_id)
    )
    return len(deleted.all())
