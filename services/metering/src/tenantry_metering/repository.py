"""Every SQL statement of metering, in one place: ``tenant_id`` is in every key and WHERE clause.

The hot path (``insert_ledger_rows`` and the aggregate upserts) sends whole batches as arrays
through ``unnest`` — one statement per table per batch, whatever the batch size.

Three functions list tenant ids across tenants (``tenants_with_usage_since``,
``tenants_with_pending_alerts``, ``offboarded_tenant_ids``); they are the platform's own
bookkeeping (which tenants to reconcile or to publish alerts for) and return ids only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from tenantry_common.ids import utcnow


@dataclass(frozen=True)
class LedgerRow:
    tenant_id: uuid.UUID
    event_id: uuid.UUID
    request_id: uuid.UUID
    occurred_at: datetime
    day: date
    model: str
    user_id: str
    source: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    cost_micros: int
    priced: bool
    payload_sha256: bytes


@dataclass(frozen=True)
class AggregateDelta:
    tenant_id: uuid.UUID
    period: date  # the day, or the first day of the month
    model: str
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    unpriced_requests: int


@dataclass(frozen=True)
class AggregateRow:
    tenant_id: uuid.UUID
    period: date
    model: str
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    unpriced_requests: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class AlertRow:
    tenant_id: uuid.UUID
    kind: str
    period: str
    threshold_percent: int
    used: int
    limit: int


_INSERT_LEDGER = text(
    """
    INSERT INTO usage_ledger (tenant_id, event_id, request_id, occurred_at, day, model, user_id,
        source, prompt_tokens, completion_tokens, cached, cost_micros, priced, payload_sha256)
    SELECT * FROM unnest(
        CAST(:tenant_id AS uuid[]), CAST(:event_id AS uuid[]), CAST(:request_id AS uuid[]),
        CAST(:occurred_at AS timestamptz[]), CAST(:day AS date[]), CAST(:model AS varchar[]),
        CAST(:user_id AS varchar[]), CAST(:source AS varchar[]), CAST(:prompt AS bigint[]),
        CAST(:completion AS bigint[]), CAST(:cached AS boolean[]), CAST(:cost AS bigint[]),
        CAST(:priced AS boolean[]), CAST(:sha AS bytea[]))
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING tenant_id, event_id
    """
)


async def insert_ledger_rows(
    conn: AsyncConnection, *, rows: Sequence[LedgerRow]
) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """Insert rows not yet in the ledger; returns the (tenant, event) keys actually inserted."""
    if not rows:
        return set()
    result = await conn.execute(
        _INSERT_LEDGER,
        {
            "tenant_id": [r.tenant_id for r in rows],
            "event_id": [r.event_id for r in rows],
            "request_id": [r.request_id for r in rows],
            "occurred_at": [r.occurred_at for r in rows],
            "day": [r.day for r in rows],
            "model": [r.model for r in rows],
            "user_id": [r.user_id for r in rows],
            "source": [r.source for r in rows],
            "prompt": [r.prompt_tokens for r in rows],
            "completion": [r.completion_tokens for r in rows],
            "cached": [r.cached for r in rows],
            "cost": [r.cost_micros for r in rows],
            "priced": [r.priced for r in rows],
            "sha": [r.payload_sha256 for r in rows],
        },
    )
    return {(row[0], row[1]) for row in result}


async def ledger_fingerprints(
    conn: AsyncConnection, *, keys: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], bytes]:
    """The payload hashes stored for (tenant, event) keys already in the ledger."""
    if not keys:
        return {}
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, event_id, payload_sha256 FROM usage_ledger
            WHERE (tenant_id, event_id) IN (
                SELECT * FROM unnest(CAST(:tenant_id AS uuid[]), CAST(:event_id AS uuid[])))
            """
        ),
        {"tenant_id": [k[0] for k in keys], "event_id": [k[1] for k in keys]},
    )
    return {(row[0], row[1]): bytes(row[2]) for row in result}


def _upsert_aggregates(table: str, period_column: str) -> str:
    # Only ever called with the two literal table names below, never with input.
    return f"""
    INSERT INTO {table} (tenant_id, {period_column}, model, requests, cached_requests,
        prompt_tokens, completion_tokens, cost_micros, unpriced_requests)
    SELECT * FROM unnest(
        CAST(:tenant_id AS uuid[]), CAST(:period AS date[]), CAST(:model AS varchar[]),
        CAST(:requests AS bigint[]), CAST(:cached AS bigint[]), CAST(:prompt AS bigint[]),
        CAST(:completion AS bigint[]), CAST(:cost AS bigint[]), CAST(:unpriced AS bigint[]))
    ON CONFLICT (tenant_id, {period_column}, model) DO UPDATE SET
        requests = {table}.requests + EXCLUDED.requests,
        cached_requests = {table}.cached_requests + EXCLUDED.cached_requests,
        prompt_tokens = {table}.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = {table}.completion_tokens + EXCLUDED.completion_tokens,
        cost_micros = {table}.cost_micros + EXCLUDED.cost_micros,
        unpriced_requests = {table}.unpriced_requests + EXCLUDED.unpriced_requests
    RETURNING tenant_id, {period_column}, model, requests, cached_requests, prompt_tokens,
        completion_tokens, cost_micros, unpriced_requests
    """  # noqa: S608


_UPSERT_DAILY = text(_upsert_aggregates("usage_daily", "day"))
_UPSERT_MONTHLY = text(_upsert_aggregates("usage_monthly", "month"))


async def add_to_aggregates(
    conn: AsyncConnection, *, monthly: bool, deltas: Sequence[AggregateDelta]
) -> list[AggregateRow]:
    """Add deltas to the daily (or monthly) aggregates; returns the rows as they now stand."""
    if not deltas:
        return []
    # Sorted keys: two transactions touching the same rows lock them in the same order.
    ordered = sorted(deltas, key=lambda d: (d.tenant_id, d.period, d.model))
    result = await conn.execute(
        _UPSERT_MONTHLY if monthly else _UPSERT_DAILY,
        {
            "tenant_id": [d.tenant_id for d in ordered],
            "period": [d.period for d in ordered],
            "model": [d.model for d in ordered],
            "requests": [d.requests for d in ordered],
            "cached": [d.cached_requests for d in ordered],
            "prompt": [d.prompt_tokens for d in ordered],
            "completion": [d.completion_tokens for d in ordered],
            "cost": [d.cost_micros for d in ordered],
            "unpriced": [d.unpriced_requests for d in ordered],
        },
    )
    return [AggregateRow(*row) for row in result]


async def day_token_totals(
    conn: AsyncConnection, *, keys: Sequence[tuple[uuid.UUID, date]]
) -> dict[tuple[uuid.UUID, date], int]:
    """Tokens used per (tenant, day), all models together."""
    if not keys:
        return {}
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, day, SUM(prompt_tokens + completion_tokens) FROM usage_daily
            WHERE (tenant_id, day) IN (
                SELECT * FROM unnest(CAST(:tenant_id AS uuid[]), CAST(:day AS date[])))
            GROUP BY tenant_id, day
            """
        ),
        {"tenant_id": [k[0] for k in keys], "day": [k[1] for k in keys]},
    )
    return {(row[0], row[1]): int(row[2]) for row in result}


async def month_spend_totals(
    conn: AsyncConnection, *, keys: Sequence[tuple[uuid.UUID, date]]
) -> dict[tuple[uuid.UUID, date], int]:
    """Micro-dollars spent per (tenant, month's first day), all models together."""
    if not keys:
        return {}
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, month, SUM(cost_micros) FROM usage_monthly
            WHERE (tenant_id, month) IN (
                SELECT * FROM unnest(CAST(:tenant_id AS uuid[]), CAST(:month AS date[])))
            GROUP BY tenant_id, month
            """
        ),
        {"tenant_id": [k[0] for k in keys], "month": [k[1] for k in keys]},
    )
    return {(row[0], row[1]): int(row[2]) for row in result}


async def insert_alerts(conn: AsyncConnection, *, alerts: Sequence[AlertRow]) -> int:
    """Record alerts not recorded yet (once per tenant, kind, period, threshold)."""
    if not alerts:
        return 0
    result = await conn.execute(
        text(
            """
            INSERT INTO budget_alerts (tenant_id, kind, period, threshold_percent, used,
                budget_limit)
            SELECT * FROM unnest(CAST(:tenant_id AS uuid[]), CAST(:kind AS varchar[]),
                CAST(:period AS varchar[]), CAST(:threshold AS integer[]),
                CAST(:used AS bigint[]), CAST(:limit AS bigint[]))
            ON CONFLICT (tenant_id, kind, period, threshold_percent) DO NOTHING
            RETURNING tenant_id
            """
        ),
        {
            "tenant_id": [a.tenant_id for a in alerts],
            "kind": [a.kind for a in alerts],
            "period": [a.period for a in alerts],
            "threshold": [a.threshold_percent for a in alerts],
            "used": [a.used for a in alerts],
            "limit": [a.limit for a in alerts],
        },
    )
    return len(result.all())


async def pending_alerts(
    conn: AsyncConnection, *, tenant_ids: Sequence[uuid.UUID]
) -> list[AlertRow]:
    """Alerts of these tenants not published yet (the outbox)."""
    if not tenant_ids:
        return []
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, kind, period, threshold_percent, used, budget_limit
            FROM budget_alerts
            WHERE tenant_id = ANY(CAST(:tenant_ids AS uuid[])) AND published_at IS NULL
            ORDER BY created_at, threshold_percent
            """
        ),
        {"tenant_ids": list(tenant_ids)},
    )
    return [AlertRow(*row) for row in result]


async def mark_alert_published(conn: AsyncConnection, *, alert: AlertRow) -> None:
    """Take an alert out of the outbox."""
    await conn.execute(
        text(
            """
            UPDATE budget_alerts SET published_at = :now
            WHERE tenant_id = :tenant_id AND kind = :kind AND period = :period
              AND threshold_percent = :threshold
            """
        ),
        {
            "now": utcnow(),
            "tenant_id": alert.tenant_id,
            "kind": alert.kind,
            "period": alert.period,
            "threshold": alert.threshold_percent,
        },
    )


async def tenants_with_pending_alerts(conn: AsyncConnection) -> list[uuid.UUID]:
    """Platform bookkeeping: tenants whose alerts still wait to be published (ids only)."""
    result = await conn.execute(
        text("SELECT DISTINCT tenant_id FROM budget_alerts WHERE published_at IS NULL")
    )
    return [row[0] for row in result]


async def tenants_with_usage_since(conn: AsyncConnection, *, since: date) -> list[uuid.UUID]:
    """Platform bookkeeping: tenants with usage on or after ``since`` (ids only)."""
    result = await conn.execute(
        text("SELECT DISTINCT tenant_id FROM usage_daily WHERE day >= :since"), {"since": since}
    )
    return [row[0] for row in result]


async def daily_rows(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, start: date, end: date
) -> list[AggregateRow]:
    """One tenant's per-day, per-model aggregates between two days (inclusive)."""
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, day, model, requests, cached_requests, prompt_tokens,
                completion_tokens, cost_micros, unpriced_requests
            FROM usage_daily
            WHERE tenant_id = :tenant_id AND day BETWEEN :start AND :end
            ORDER BY day, model
            """
        ),
        {"tenant_id": tenant_id, "start": start, "end": end},
    )
    return [AggregateRow(*row) for row in result]


async def monthly_rows(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, start: date, end: date
) -> list[AggregateRow]:
    """One tenant's per-month, per-model aggregates between two months (first days)."""
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, month, model, requests, cached_requests, prompt_tokens,
                completion_tokens, cost_micros, unpriced_requests
            FROM usage_monthly
            WHERE tenant_id = :tenant_id AND month BETWEEN :start AND :end
            ORDER BY month, model
            """
        ),
        {"tenant_id": tenant_id, "start": start, "end": end},
    )
    return [AggregateRow(*row) for row in result]


@dataclass(frozen=True)
class LedgerTotals:
    events: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


async def ledger_totals(conn: AsyncConnection, *, tenant_id: uuid.UUID) -> LedgerTotals:
    """One tenant's totals straight from the ledger (the source of truth)."""
    result = await conn.execute(
        text(
            """
            SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0),
                COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_micros), 0)
            FROM usage_ledger WHERE tenant_id = :tenant_id
            """
        ),
        {"tenant_id": tenant_id},
    )
    row = result.one()
    return LedgerTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


async def mark_offboarded(conn: AsyncConnection, *, tenant_id: uuid.UUID) -> None:
    """Remember that a tenant was offboarded (idempotent)."""
    await conn.execute(
        text(
            """
            INSERT INTO offboarded_tenants (tenant_id, offboarded_at) VALUES (:tenant_id, :now)
            ON CONFLICT (tenant_id) DO NOTHING
            """
        ),
        {"tenant_id": tenant_id, "now": utcnow()},
    )


async def offboarded_tenant_ids(conn: AsyncConnection) -> set[uuid.UUID]:
    """Platform bookkeeping: every offboarded tenant (ids only)."""
    result = await conn.execute(text("SELECT tenant_id FROM offboarded_tenants"))
    return {row[0] for row in result}
