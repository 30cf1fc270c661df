"""Every SQL statement of metering, in one place: ``tenant_id`` is in every key and WHERE clause.

The hot path (``record_ledger_batch``) sends a whole batch as arrays through ``unnest``: one
statement writes the ledger rows and both aggregates, whatever the batch size.

Three functions list tenant ids across tenants (``tenants_with_usage_since``,
``tenants_with_pending_alerts``, ``offboarded_tenant_ids``); they are the platform's own
bookkeeping (which tenants to reconcile or to publish alerts for) and return ids only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from tenantry_common.ids import utcnow


@dataclass
class LedgerColumns:
    """A batch of ledger rows as one list per column (same order), each key at most once."""

    tenant_id: list[uuid.UUID] = field(default_factory=list)
    event_id: list[uuid.UUID] = field(default_factory=list)
    request_id: list[uuid.UUID] = field(default_factory=list)
    occurred_at: list[datetime] = field(default_factory=list)
    day: list[date] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    end_user: list[str | None] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)
    cost_micros: list[int] = field(default_factory=list)
    #: False when the model is not in the catalogue (recorded at cost 0, flagged).
    priced: list[bool] = field(default_factory=list)
    payload_sha256: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_id)

    def keys(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        return list(zip(self.tenant_id, self.event_id, strict=True))


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


@dataclass(frozen=True)
class LedgerWrite:
    """What one ledger statement did: the daily rows it changed and how, and which rows
    were new."""

    #: The daily aggregates this batch changed, as they now stand.
    daily: list[AggregateRow]
    #: What the batch's new rows added to each of those (tenant, day, model) rows.
    added: list[AggregateDelta]
    #: The (tenant, event) keys inserted, or None when every row of the batch was new.
    inserted: set[tuple[uuid.UUID, uuid.UUID]] | None


_AGGREGATE_SUMS = """
    requests = {table}.requests + EXCLUDED.requests,
    cached_requests = {table}.cached_requests + EXCLUDED.cached_requests,
    prompt_tokens = {table}.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = {table}.completion_tokens + EXCLUDED.completion_tokens,
    cost_micros = {table}.cost_micros + EXCLUDED.cost_micros,
    unpriced_requests = {table}.unpriced_requests + EXCLUDED.unpriced_requests
"""

# One statement (one round trip) for the whole batch: the ledger rows not seen before, and
# what exactly those rows add to the daily and monthly aggregates, summed by Postgres from the
# INSERT's own RETURNING (a row skipped by ON CONFLICT adds nothing, even when another
# transaction inserted it a moment ago). Rows and aggregate keys are inserted in key order,
# so two transactions touching the same rows lock them in the same order. The inserted keys
# are returned only when some row was not new (a redelivery), which is rare.
_RECORD_BATCH = text(
    f"""
    WITH batch AS (
        SELECT * FROM unnest(
            CAST(:tenant_id AS uuid[]), CAST(:event_id AS uuid[]), CAST(:request_id AS uuid[]),
            CAST(:occurred_at AS timestamptz[]), CAST(:day AS date[]), CAST(:model AS varchar[]),
            CAST(:user_id AS varchar[]), CAST(:end_user AS varchar[]), CAST(:source AS varchar[]),
            CAST(:prompt AS bigint[]), CAST(:completion AS bigint[]), CAST(:cached AS boolean[]),
            CAST(:cost AS bigint[]), CAST(:priced AS boolean[]), CAST(:sha AS bytea[]))
        AS b(tenant_id, event_id, request_id, occurred_at, day, model, user_id, end_user, source,
             prompt_tokens, completion_tokens, cached, cost_micros, priced, payload_sha256)
    ),
    inserted AS (
        INSERT INTO usage_ledger (tenant_id, event_id, request_id, occurred_at, day, model,
            user_id, end_user, source, prompt_tokens, completion_tokens, cached, cost_micros,
            priced, payload_sha256)
        SELECT * FROM batch ORDER BY tenant_id, event_id
        ON CONFLICT (tenant_id, event_id) DO NOTHING
        RETURNING tenant_id, event_id, day, model, cached, prompt_tokens, completion_tokens,
            cost_micros, priced
    ),
    added AS (
        SELECT tenant_id, day, model, count(*) AS requests,
            count(*) FILTER (WHERE cached) AS cached_requests,
            CAST(sum(prompt_tokens) AS bigint) AS prompt_tokens,
            CAST(sum(completion_tokens) AS bigint) AS completion_tokens,
            CAST(sum(cost_micros) AS bigint) AS cost_micros,
            count(*) FILTER (WHERE NOT priced) AS unpriced_requests
        FROM inserted GROUP BY tenant_id, day, model
    ),
    daily AS (
        INSERT INTO usage_daily (tenant_id, day, model, requests, cached_requests,
            prompt_tokens, completion_tokens, cost_micros, unpriced_requests)
        SELECT * FROM added ORDER BY tenant_id, day, model
        ON CONFLICT (tenant_id, day, model) DO UPDATE SET
        {_AGGREGATE_SUMS.format(table="usage_daily")}
        RETURNING tenant_id, day, model, requests, cached_requests, prompt_tokens,
            completion_tokens, cost_micros, unpriced_requests
    ),
    monthly AS (
        INSERT INTO usage_monthly (tenant_id, month, model, requests, cached_requests,
            prompt_tokens, completion_tokens, cost_micros, unpriced_requests)
        SELECT tenant_id, day - CAST(EXTRACT(DAY FROM day) AS integer) + 1 AS month, model,
            sum(requests), sum(cached_requests), sum(prompt_tokens), sum(completion_tokens),
            sum(cost_micros), sum(unpriced_requests)
        FROM added GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (tenant_id, month, model) DO UPDATE SET
        {_AGGREGATE_SUMS.format(table="usage_monthly")}
    )
    SELECT d.tenant_id, d.day, d.model, d.requests, d.cached_requests, d.prompt_tokens,
        d.completion_tokens, d.cost_micros, d.unpriced_requests, a.requests, a.cached_requests,
        a.prompt_tokens, a.completion_tokens, a.cost_micros, a.unpriced_requests,
        CAST(NULL AS uuid) AS event_id
    FROM daily d JOIN added a USING (tenant_id, day, model)
    UNION ALL
    SELECT tenant_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, event_id
    FROM inserted WHERE (SELECT count(*) FROM inserted) < (SELECT count(*) FROM batch)
    """  # noqa: S608
)


async def record_ledger_batch(conn: AsyncConnection, *, rows: LedgerColumns) -> LedgerWrite:
    """Insert the rows not yet in the ledger and add exactly those to the aggregates."""
    if not rows:
        return LedgerWrite(daily=[], added=[], inserted=set())
    result = await conn.execute(
        _RECORD_BATCH,
        {
            "tenant_id": rows.tenant_id,
            "event_id": rows.event_id,
            "request_id": rows.request_id,
            "occurred_at": rows.occurred_at,
            "day": rows.day,
            "model": rows.model,
            "user_id": rows.user_id,
            # unnest pads a shorter array with NULLs: a batch naming no end user sends none.
            "end_user": rows.end_user if any(rows.end_user) else [],
            "source": rows.source,
            "prompt": rows.prompt_tokens,
            "completion": rows.completion_tokens,
            "cached": rows.cached,
            "cost": rows.cost_micros,
            "priced": rows.priced,
            "sha": rows.payload_sha256,
        },
    )
    daily: list[AggregateRow] = []
    added: list[AggregateDelta] = []
    inserted: set[tuple[uuid.UUID, uuid.UUID]] = set()
    for row in result:
        if row[15] is None:
            daily.append(AggregateRow(*row[:9]))
            added.append(AggregateDelta(*row[:3], *row[9:15]))
        else:
            inserted.add((row[0], row[15]))
    if not daily:
        return LedgerWrite(daily=[], added=[], inserted=set())  # every row was seen before
    return LedgerWrite(daily=daily, added=added, inserted=inserted or None)


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


async def end_user_day_token_totals(
    conn: AsyncConnection, *, keys: Sequence[tuple[uuid.UUID, date]]
) -> dict[tuple[uuid.UUID, date, str], int]:
    """Tokens used per (tenant, day, end user), of the usage that named an end user."""
    if not keys:
        return {}
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, day, end_user, SUM(prompt_tokens + completion_tokens)
            FROM usage_ledger
            WHERE end_user IS NOT NULL AND (tenant_id, day) IN (
                SELECT * FROM unnest(CAST(:tenant_id AS uuid[]), CAST(:day AS date[])))
            GROUP BY tenant_id, day, end_user
            """
        ),
        {"tenant_id": [k[0] for k in keys], "day": [k[1] for k in keys]},
    )
    return {(row[0], row[1], row[2]): int(row[3]) for row in result}


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


@dataclass(frozen=True)
class EndUserRow:
    end_user: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


async def end_user_rows(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, start: date, end: date, limit: int
) -> list[EndUserRow]:
    """One tenant's usage per end user between two days (inclusive), the costliest first, at
    most ``limit`` of them (from the ledger's end-user index)."""
    result = await conn.execute(
        text(
            """
            SELECT end_user, count(*), CAST(sum(prompt_tokens) AS bigint),
                CAST(sum(completion_tokens) AS bigint), CAST(sum(cost_micros) AS bigint)
            FROM usage_ledger
            WHERE tenant_id = :tenant_id AND day BETWEEN :start AND :end
                AND end_user IS NOT NULL
            GROUP BY end_user
            ORDER BY 5 DESC, 3 + 4 DESC, end_user
            LIMIT :limit
            """
        ),
        {"tenant_id": tenant_id, "start": start, "end": end, "limit": limit},
    )
    return [EndUserRow(*row) for row in result]


@dataclass(frozen=True)
class TenantTotalsRow:
    tenant_id: uuid.UUID
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    unpriced_requests: int


async def tenant_rows(
    conn: AsyncConnection, *, start: date, end: date, limit: int
) -> list[TenantTotalsRow]:
    """Every tenant's usage between two days (inclusive), the costliest first, at most
    ``limit`` of them (operators: deliberately across tenants)."""
    result = await conn.execute(
        text(
            """
            SELECT tenant_id, CAST(sum(requests) AS bigint), CAST(sum(cached_requests) AS bigint),
                CAST(sum(prompt_tokens) AS bigint), CAST(sum(completion_tokens) AS bigint),
                CAST(sum(cost_micros) AS bigint), CAST(sum(unpriced_requests) AS bigint)
            FROM usage_daily
            WHERE day BETWEEN :start AND :end
            GROUP BY tenant_id
            ORDER BY 6 DESC, 4 + 5 DESC, tenant_id
            LIMIT :limit
            """
        ),
        {"start": start, "end": end, "limit": limit},
    )
    return [TenantTotalsRow(*row) for row in result]


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
