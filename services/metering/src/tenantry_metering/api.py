"""The usage query API the edge forwards to: tenant from the verified token, JSON or CSV."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Annotated, Literal, Self

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, Field
from tenantry_common.auth import Principal, Role, TokenVerifier, principal_dependency
from tenantry_common.csvsafe import csv_text
from tenantry_common.events import TenantConfig

from tenantry_metering import repository as repo
from tenantry_metering import service
from tenantry_metering.repository import AggregateRow
from tenantry_metering.runtime import Runtime

Period = Literal["day", "month"]
Format = Literal["json", "csv"]
Limit = Annotated[int, Query(ge=1, le=1000, description="The most end users listed.")]
TenantLimit = Annotated[int, Query(ge=1, le=10_000, description="The most tenants listed.")]


class UsageLine(BaseModel):
    period: str = Field(description="YYYY-MM-DD (day) or YYYY-MM (month), UTC.")
    model: str
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int
    unpriced_requests: int = Field(description="Requests of models missing from the catalogue.")


class PeriodSummary(BaseModel):
    period: str
    requests: int
    total_tokens: int
    cost_micros: int
    budget_kind: Literal["daily_tokens", "monthly_spend"]
    budget_limit: int | None = Field(description="Tokens (day) or micro-dollars (month).")
    budget_used: int = Field(description="Tokens (day) or micro-dollars (month).")
    percent_used: float | None
    remaining: int | None


class UsageReport(BaseModel):
    tenant_id: uuid.UUID
    period: Period
    start: date
    end: date
    lines: list[UsageLine]
    periods: list[PeriodSummary]


class EndUserUsage(BaseModel):
    end_user: str = Field(description="As the requests named it (OpenAI's `user`).")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int


class EndUserReport(BaseModel):
    tenant_id: uuid.UUID
    start: date
    end: date
    end_users: list[EndUserUsage] = Field(description="The costliest first.")
    more: bool = Field(description="More end users used the tenant than `limit` lists.")
    end_user_daily_token_budget: int = Field(
        description="The tokens each end user may use per UTC day under the tenant's config "
        "now (0: no such budget); a one-day report shows who is near it."
    )


END_USER_CSV_COLUMNS = tuple(EndUserUsage.model_fields)


class TenantUsage(BaseModel):
    tenant_id: uuid.UUID
    tenant_name: str | None = Field(
        description="As its latest config names it; null once offboarded or not yet known."
    )
    tier: str | None = Field(description="Its tier now; null like tenant_name.")
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int
    unpriced_requests: int = Field(description="Requests of models without a price.")

    @classmethod
    def of(cls, row: repo.TenantTotalsRow, config: TenantConfig | None) -> Self:
        return cls(
            tenant_id=row.tenant_id,
            tenant_name=config.tenant_name if config else None,
            tier=config.tier.value if config else None,
            requests=row.requests,
            cached_requests=row.cached_requests,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.prompt_tokens + row.completion_tokens,
            cost_micros=row.cost_micros,
            unpriced_requests=row.unpriced_requests,
        )


class TenantsReport(BaseModel):
    start: date
    end: date
    tenants: list[TenantUsage] = Field(description="The costliest first.")
    more: bool = Field(description="More tenants used the platform than `limit` lists.")


TENANT_CSV_COLUMNS = tuple(TenantUsage.model_fields)


def _label(period: Period, day: date) -> str:
    return day.isoformat() if period == "day" else day.isoformat()[:7]


def build_report(
    *,
    tenant_id: uuid.UUID,
    period: Period,
    start: date,
    end: date,
    rows: list[AggregateRow],
    directory: service.TenantDirectory,
) -> UsageReport:
    """Lines per period and model, and per period the budget used and remaining."""
    config = directory.budgets_of(tenant_id)
    lines = [
        UsageLine(
            period=_label(period, r.period),
            model=r.model,
            requests=r.requests,
            cached_requests=r.cached_requests,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            total_tokens=r.total_tokens,
            cost_micros=r.cost_micros,
            unpriced_requests=r.unpriced_requests,
        )
        for r in rows
    ]
    summaries: list[PeriodSummary] = []
    for label in sorted({line.period for line in lines}):
        of_period = [line for line in lines if line.period == label]
        tokens = sum(line.total_tokens for line in of_period)
        cost = sum(line.cost_micros for line in of_period)
        if period == "day":
            limit = config.daily_token_budget if config else None
            used = tokens
        else:
            limit = config.monthly_spend_budget_micros if config else None
            used = cost
        summaries.append(
            PeriodSummary(
                period=label,
                requests=sum(line.requests for line in of_period),
                total_tokens=tokens,
                cost_micros=cost,
                budget_kind="daily_tokens" if period == "day" else "monthly_spend",
                budget_limit=limit,
                budget_used=used,
                # Integers until the last step: basis points, then two decimals.
                percent_used=(used * 10_000 // limit) / 100 if limit else None,
                remaining=max(0, limit - used) if limit is not None else None,
            )
        )
    return UsageReport(
        tenant_id=tenant_id, period=period, start=start, end=end, lines=lines, periods=summaries
    )


CSV_COLUMNS = (
    "period",
    "model",
    "requests",
    "cached_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
    "unpriced_requests",
    "budget_kind",
    "budget_limit",
    "budget_used",
    "percent_used",
    "remaining",
)


def report_csv(report: UsageReport) -> str:
    """One CSV line per period and model, with its period's budget columns."""
    by_period = {p.period: p for p in report.periods}
    budget = ("budget_kind", "budget_limit", "budget_used", "percent_used", "remaining")
    return csv_text(
        CSV_COLUMNS,
        (
            line.model_dump() | {k: getattr(by_period[line.period], k) for k in budget}
            for line in report.lines
        ),
    )


def end_user_csv(report: EndUserReport) -> str:
    """One CSV line per end user (names a spreadsheet would run neutralised)."""
    return csv_text(END_USER_CSV_COLUMNS, (line.model_dump() for line in report.end_users))


def tenants_csv(report: TenantsReport) -> str:
    """One CSV line per tenant (names a spreadsheet would run neutralised)."""
    return csv_text(TENANT_CSV_COLUMNS, (line.model_dump() for line in report.tenants))


def _respond(report: BaseModel, fmt: Format, as_csv: Callable[[], str], filename: str) -> Response:
    """The report as JSON, or as a CSV attachment."""
    if fmt == "csv":
        return Response(
            as_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return Response(report.model_dump_json(), media_type="application/json")


def _own_tenant(principal: Principal) -> uuid.UUID:
    """The token's tenant, whose usage its admins (and operators) may read."""
    if not principal.can_admin(principal.tenant_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "usage needs the admin role")
    return principal.tenant_id


def _operator_only(principal: Principal) -> None:
    if principal.role is not Role.OPERATOR:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this path needs the operator role")


def usage_router(runtime: Runtime, verifier: TokenVerifier) -> APIRouter:
    """``GET /v1/usage`` (the token's tenant) and ``GET /v1/tenants/{id}/usage`` (operators)."""
    router = APIRouter(tags=["usage"])
    # A local Annotated alias would not resolve under postponed annotations: a default it is.
    current_principal = Depends(principal_dependency(verifier))

    def days(period: Period, start: date | None, end: date | None) -> tuple[date, date]:
        """The query's first and last day: by default the last 30 days, or this month."""
        end = end or service.utc_today()
        start = start or (end - timedelta(days=29) if period == "day" else end.replace(day=1))
        if start > end:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "start must not be after end")
        if (end - start).days > runtime.settings.query_max_days:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"at most {runtime.settings.query_max_days} days per query",
            )
        return start, end

    async def answer(
        tenant_id: uuid.UUID, period: Period, start: date | None, end: date | None, fmt: Format
    ) -> Response:
        start, end = days(period, start, end)
        async with runtime.db().connect() as conn:
            if period == "day":
                rows = await repo.daily_rows(conn, tenant_id=tenant_id, start=start, end=end)
            else:
                rows = await repo.monthly_rows(
                    conn,
                    tenant_id=tenant_id,
                    start=service.first_of_month(start),
                    end=service.first_of_month(end),
                )
        report = build_report(
            tenant_id=tenant_id,
            period=period,
            start=start,
            end=end,
            rows=rows,
            directory=runtime.directory,
        )
        return _respond(report, fmt, lambda: report_csv(report), f"usage-{tenant_id}-{period}.csv")

    @router.get("/v1/usage", response_model=UsageReport)
    async def own_usage(
        principal: Principal = current_principal,
        period: Period = "day",
        start: date | None = None,
        end: date | None = None,
        format: Annotated[Format, Query()] = "json",
    ) -> Response:
        """The caller's tenant's usage (tenant admins and operators)."""
        return await answer(_own_tenant(principal), period, start, end, format)

    @router.get("/v1/tenants/{tenant_id}/usage", response_model=UsageReport)
    async def tenant_usage(
        tenant_id: uuid.UUID,
        principal: Principal = current_principal,
        period: Period = "day",
        start: date | None = None,
        end: date | None = None,
        format: Annotated[Format, Query()] = "json",
    ) -> Response:
        """Any tenant's usage, for operators only."""
        _operator_only(principal)
        return await answer(tenant_id, period, start, end, format)

    async def answer_end_users(
        tenant_id: uuid.UUID, start: date | None, end: date | None, limit: int, fmt: Format
    ) -> Response:
        start, end = days("day", start, end)
        async with runtime.db().connect() as conn:
            rows = await repo.end_user_rows(
                conn, tenant_id=tenant_id, start=start, end=end, limit=limit + 1
            )
        report = EndUserReport(
            tenant_id=tenant_id,
            start=start,
            end=end,
            end_users=[
                EndUserUsage(
                    end_user=r.end_user,
                    requests=r.requests,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    total_tokens=r.prompt_tokens + r.completion_tokens,
                    cost_micros=r.cost_micros,
                )
                for r in rows[:limit]
            ],
            more=len(rows) > limit,
            end_user_daily_token_budget=config.end_user_daily_token_budget
            if (config := runtime.directory.budgets_of(tenant_id)) is not None
            else 0,
        )
        return _respond(
            report, fmt, lambda: end_user_csv(report), f"usage-{tenant_id}-end-users.csv"
        )

    @router.get("/v1/usage/tenants", response_model=TenantsReport)
    async def every_tenant(
        principal: Principal = current_principal,
        start: date | None = None,
        end: date | None = None,
        limit: TenantLimit = 100,
        format: Annotated[Format, Query()] = "json",
    ) -> Response:
        """Every tenant's usage, the costliest first, for operators (billing, capacity); by
        default over the last 30 days."""
        _operator_only(principal)
        start, end = days("day", start, end)
        async with runtime.db().connect() as conn:
            rows = await repo.tenant_rows(conn, start=start, end=end, limit=limit + 1)
        report = TenantsReport(
            start=start,
            end=end,
            tenants=[
                TenantUsage.of(r, runtime.directory.budgets_of(r.tenant_id)) for r in rows[:limit]
            ],
            more=len(rows) > limit,
        )
        return _respond(report, format, lambda: tenants_csv(report), "usage-tenants.csv")

    @router.get("/v1/usage/end-users", response_model=EndUserReport)
    async def own_end_users(
        principal: Principal = current_principal,
        start: date | None = None,
        end: date | None = None,
        limit: Limit = 100,
        format: Annotated[Format, Query()] = "json",
    ) -> Response:
        """The caller's tenant's usage per end user its requests named (tenant admins and
        operators); by default over the last 30 days."""
        return await answer_end_users(_own_tenant(principal), start, end, limit, format)

    @router.get("/v1/tenants/{tenant_id}/usage/end-users", response_model=EndUserReport)
    async def tenant_end_users(
        tenant_id: uuid.UUID,
        principal: Principal = current_principal,
        start: date | None = None,
        end: date | None = None,
        limit: Limit = 100,
        format: Annotated[Format, Query()] = "json",
    ) -> Response:
        """Any tenant's usage per end user, for operators only."""
        _operator_only(principal)
        return await answer_end_users(tenant_id, start, end, limit, format)

    return router
