"""HTTP routes: export and verify, for a tenant's admins (own tenant) and operators (any)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.auth import Principal, Role
from tenantry_common.events import AuditRecorded, AuditStatus, AuditType
from tenantry_common.ids import utcnow
from tenantry_common.messaging import publish_event
from tenantry_common.topics import AUDIT

from tenantry_audit import service
from tenantry_audit.anchors import AnchorsUnavailable, anchors_for
from tenantry_audit.config import AuditSettings
from tenantry_audit.export import ExportFormat, encode
from tenantry_audit.metrics import AuditMetrics

log = logging.getLogger("tenantry.audit.api")


@dataclass
class ApiContext:
    """What the routes need, set on ``app.state.audit`` by ``build_app``."""

    settings: AuditSettings
    engine: AsyncEngine
    broker: KafkaBroker
    metrics: AuditMetrics
    authenticate: Callable[[Request], Awaitable[Principal]]


class BrokenLink(BaseModel):
    sequence: int
    reason: str


class VerifyResponse(BaseModel):
    tenant_id: uuid.UUID
    ok: bool
    records_checked: int
    checkpoint_sequence: int
    head_sequence: int | None
    head_hash: str | None
    first_broken_link: BrokenLink | None
    anchors_checked: int | None = Field(
        default=None,
        description="Published anchors compared with the chain (null unless against_anchors).",
    )


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.audit
    return context


async def _caller(request: Request) -> Principal:
    return await _context(request).authenticate(request)


# Module-level aliases: FastAPI resolves (postponed) annotations from the module's globals.
Context = Annotated[ApiContext, Depends(_context)]
Caller = Annotated[Principal, Depends(_caller)]
Start = Annotated[datetime | None, Query(description="Inclusive, ISO 8601 with offset.")]
End = Annotated[datetime | None, Query(description="Exclusive, ISO 8601 with offset.")]
Format = Annotated[ExportFormat, Query(alias="format")]
AgainstAnchors = Annotated[
    bool,
    Query(
        description="Also check the chain against the heads published on the anchors topic "
        "(detects a rewrite of the whole tail, head row included)."
    ),
]


async def _audit(context: ApiContext, event: AuditRecorded) -> None:
    await publish_event(context.broker, AUDIT, event)


def _record(
    request: Request,
    principal: Principal,
    *,
    tenant_id: uuid.UUID,
    audit_type: AuditType,
    action: str,
    outcome: AuditStatus,
    error: str | None = None,
    details: dict[str, str | int | None] | None = None,
) -> AuditRecorded:
    return AuditRecorded(
        tenant_id=tenant_id,
        audit_type=audit_type,
        source="audit",
        actor=principal.subject,
        resource_type="audit_log",
        resource_id=str(tenant_id),
        action=action,
        status=outcome,
        error=error,
        ip_address=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        details={"role": principal.role.value, "actor_tenant_id": str(principal.tenant_id)}
        | (details or {}),
    )


async def _deny(
    request: Request, context: ApiContext, principal: Principal, action: str, reason: str
) -> HTTPException:
    try:
        await _audit(
            context,
            _record(
                request,
                principal,
                tenant_id=principal.tenant_id,
                audit_type=AuditType.ACCESS_DENIED,
                action=action,
                outcome=AuditStatus.FAILURE,
                error=reason,
            ),
        )
    except Exception as exc:  # the refusal stands even if its record cannot be sent
        log.warning("access-denied record not published", extra={"error_type": type(exc).__name__})
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=reason)


def _time_range(
    settings: AuditSettings, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, detail=f"{name} must include a UTC offset"
            )
    end = end or utcnow()
    start = start or end - timedelta(days=settings.retention_days)
    if start >= end:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="start must be before end")
    return start, end


def build_router() -> APIRouter:
    """The export and verify routes (tokens verified by ``ApiContext.authenticate``)."""
    router = APIRouter(prefix="/v1", tags=["audit"])

    async def export(
        request: Request,
        context: ApiContext,
        principal: Principal,
        tenant_id: uuid.UUID,
        start: datetime | None,
        end: datetime | None,
        fmt: ExportFormat,
    ) -> StreamingResponse:
        start, end = _time_range(context.settings, start, end)
        # No export leaves without its own record: if that cannot be sent, nothing is sent.
        try:
            await _audit(
                context,
                _record(
                    request,
                    principal,
                    tenant_id=tenant_id,
                    audit_type=AuditType.EXPORT,
                    action="export",
                    outcome=AuditStatus.SUCCESS,
                    details={
                        "format": fmt.value,
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                    },
                ),
            )
        except Exception as exc:
            log.error("export record not published", extra={"error_type": type(exc).__name__})
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="audit log unavailable; try again"
            ) from None
        context.metrics.exports.labels(fmt.value).inc()
        batches = service.stream_records(
            engine=context.engine,
            tenant_id=tenant_id,
            start=start,
            end=end,
            batch_rows=context.settings.export_batch_rows,
        )
        filename = f"audit-{tenant_id}-{start:%Y%m%d}-{end:%Y%m%d}.{fmt.value}"
        media = "text/csv; charset=utf-8" if fmt is ExportFormat.CSV else "application/x-ndjson"
        return StreamingResponse(
            encode(batches, fmt),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    async def verify(
        context: ApiContext, tenant_id: uuid.UUID, against_anchors: bool
    ) -> VerifyResponse:
        anchors = None
        if against_anchors:
            # Read before the chain's snapshot is taken: every anchor read is then in it.
            try:
                anchors = await anchors_for(settings=context.settings, tenant_id=tenant_id)
            except AnchorsUnavailable as exc:
                log.error("anchors unavailable", extra={"error": str(exc)})
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail="published anchors cannot be read; try again",
                ) from None
        report = await service.verify_chain(
            engine=context.engine,
            tenant_id=tenant_id,
            batch_rows=context.settings.verify_batch_rows,
            anchors=anchors,
        )
        context.metrics.verifications.labels("ok" if report.ok else "broken").inc()
        broken = report.first_break
        return VerifyResponse(
            tenant_id=tenant_id,
            ok=report.ok,
            records_checked=report.checked,
            checkpoint_sequence=report.start_sequence,
            head_sequence=report.head_sequence,
            head_hash=report.head_hash,
            first_broken_link=BrokenLink(sequence=broken.sequence, reason=broken.reason)
            if broken
            else None,
            anchors_checked=report.anchors_checked,
        )

    @router.get("/audit/export", summary="Export the caller's tenant's audit log (tenant admin)")
    async def export_own(
        request: Request,
        context: Context,
        principal: Caller,
        start: Start = None,
        end: End = None,
        fmt: Format = ExportFormat.CSV,
    ) -> StreamingResponse:
        if not principal.can_admin(principal.tenant_id):
            raise await _deny(request, context, principal, "export", "tenant admin role required")
        return await export(request, context, principal, principal.tenant_id, start, end, fmt)

    @router.get(
        "/tenants/{tenant_id}/audit/export", summary="Export any tenant's audit log (operator)"
    )
    async def export_any(
        tenant_id: uuid.UUID,
        request: Request,
        context: Context,
        principal: Caller,
        start: Start = None,
        end: End = None,
        fmt: Format = ExportFormat.CSV,
    ) -> StreamingResponse:
        if principal.role is not Role.OPERATOR:
            raise await _deny(request, context, principal, "export", "operator role required")
        return await export(request, context, principal, tenant_id, start, end, fmt)

    @router.get("/audit/verify", summary="Verify the caller's tenant's audit chain (tenant admin)")
    async def verify_own(
        request: Request,
        context: Context,
        principal: Caller,
        against_anchors: AgainstAnchors = False,
    ) -> VerifyResponse:
        if not principal.can_admin(principal.tenant_id):
            raise await _deny(request, context, principal, "verify", "tenant admin role required")
        return await verify(context, principal.tenant_id, against_anchors)

    @router.get("/tenants/{tenant_id}/audit/verify", summary="Verify any tenant's chain (operator)")
    async def verify_any(
        tenant_id: uuid.UUID,
        request: Request,
        context: Context,
        principal: Caller,
        against_anchors: AgainstAnchors = False,
    ) -> VerifyResponse:
        if principal.role is not Role.OPERATOR:
            raise await _deny(request, context, principal, "verify", "operator role required")
        return await verify(context, tenant_id, against_anchors)

    return router
