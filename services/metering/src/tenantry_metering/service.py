"""Metering's logic: price and record usage once, keep aggregates, watch budgets, reconcile.

No broker or HTTP types here: handlers decode and publish, this module decides.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenantry_common.budget import BudgetStore, Settlement
from tenantry_common.events import (
    AuditRecorded,
    AuditStatus,
    AuditType,
    BudgetExhausted,
    BudgetKind,
    BudgetThresholdCrossed,
    TenantConfig,
    TenantConfigChanged,
    UsageRecorded,
    UsageRolledUp,
)
from tenantry_common.ids import derived_id, utcnow
from tenantry_common.messaging import PermanentError
from tenantry_common.settings import ModelSpec

from tenantry_metering import repository as repo
from tenantry_metering.repository import AggregateDelta, AggregateRow, AlertRow, LedgerColumns

log = logging.getLogger("tenantry.metering")

EXHAUSTED_PERCENT = 100


def first_of_month(day: date) -> date:
    return day.replace(day=1)


def period_label(kind: str, day: date) -> str:
    """The UTC period an alert is keyed by: ``YYYY-MM-DD`` for days, ``YYYY-MM`` for months."""
    return day.isoformat() if kind == BudgetKind.DAILY_TOKENS else day.isoformat()[:7]


def fingerprint(event: UsageRecorded) -> bytes:
    """SHA-256 of the event's canonical JSON (pydantic's dump of the validated model).

    The very bytes of ``event.model_dump_json()``, from the model's serializer directly (that
    method's keyword handling costs more than the dump itself). Ledgers already hold these
    hashes: a change to the bytes would turn every redelivery into a "different payload".
    """
    return hashlib.sha256(_SERIALIZER.to_json(event)).digest()


_SERIALIZER = UsageRecorded.__pydantic_serializer__


def price(*, catalogue: Mapping[str, ModelSpec], event: UsageRecorded) -> tuple[int, bool]:
    """(cost in micro-dollars, whether the model was in the catalogue).

    An unknown model is recorded at cost 0 and flagged (``priced = false``) rather than
    dead-lettered: its tokens still count against the daily budget and the edge's reservation
    is still settled; the flag (and a metric) tells operators to add the model's price.
    """
    spec = catalogue.get(event.model)
    if spec is None:
        return 0, False
    return spec.cost_micros(event.prompt_tokens, event.completion_tokens), True


# --------------------------------------------------------------------------- tenant config


@dataclass
class TenantDirectory:
    """The latest config per tenant (from ``tenants.config.v1``) and who was offboarded."""

    configs: dict[uuid.UUID, tuple[int, TenantConfig]] = field(default_factory=dict)
    offboarded: set[uuid.UUID] = field(default_factory=set)

    def apply(self, event: TenantConfigChanged) -> bool:
        """Keep the config if it is newer than the one held; True when it replaced it."""
        held = self.configs.get(event.tenant_id)
        if held is not None and held[0] >= event.version:
            return False
        self.configs[event.tenant_id] = (event.version, event.config)
        return True

    def apply_config(self, tenant_id: uuid.UUID, version: int, config: TenantConfig) -> None:
        held = self.configs.get(tenant_id)
        if held is None or held[0] < version:
            self.configs[tenant_id] = (version, config)

    def budgets_of(self, tenant_id: uuid.UUID) -> TenantConfig | None:
        """The config whose budgets are watched, or None (unknown or offboarded tenant)."""
        if tenant_id in self.offboarded:
            return None
        held = self.configs.get(tenant_id)
        return held[1] if held else None

    def budgeting_end_users(self) -> set[uuid.UUID]:
        """The tenants (not offboarded) whose config sets a daily token budget per end user."""
        return {
            tenant_id
            for tenant_id, (_, config) in self.configs.items()
            if config.end_user_daily_token_budget and tenant_id not in self.offboarded
        }


# --------------------------------------------------------------------------- recording usage


@dataclass(frozen=True)
class RecordedBatch:
    """What one batch changed, for the caller to settle, count and publish after commit."""

    recorded: int
    duplicates: int
    settlements: list[Settlement]
    daily: list[AggregateRow]
    #: What the batch's new rows added, per tenant, day and model.
    added: list[AggregateDelta]
    alerts_recorded: int
    tenants: set[uuid.UUID]


def split_by_tenant(events: Sequence[UsageRecorded], *, parts: int) -> list[list[UsageRecorded]]:
    """At most ``parts`` non-empty parts; all of a tenant's events in one, in their order."""
    if parts <= 1:
        return [list(events)]
    split: list[list[UsageRecorded]] = [[] for _ in range(parts)]
    for event in events:
        split[event.tenant_id.int % parts].append(event)
    return [part for part in split if part]


def ledger_columns(
    events: Sequence[UsageRecorded], catalogue: Mapping[str, ModelSpec]
) -> tuple[LedgerColumns, list[Settlement]]:
    """Price a batch into ledger columns, once per event id, and the settlement of each id.

    An event id seen twice in the batch with different payloads is refused (PermanentError);
    identical copies (redeliveries) count once. Columns are built one at a time (a list
    comprehension each) rather than fourteen appends per event: the hot path of metering.
    """
    unique: dict[tuple[uuid.UUID, uuid.UUID], tuple[UsageRecorded, bytes]] = {}
    for event in events:
        key = (event.tenant_id, event.event_id)
        sha = fingerprint(event)
        held = unique.get(key)
        if held is None:
            unique[key] = (event, sha)
        elif held[1] != sha:
            raise PermanentError(f"usage event {event.event_id} seen twice with different payloads")
    kept = [event for event, _ in unique.values()]
    prices = [price(catalogue=catalogue, event=event) for event in kept]
    days = [event.occurred_at.astimezone(UTC).date() for event in kept]
    rows = LedgerColumns(
        tenant_id=[tenant for tenant, _ in unique],
        event_id=[event_id for _, event_id in unique],
        request_id=[e.request_id for e in kept],
        occurred_at=[e.occurred_at for e in kept],
        day=days,
        model=[e.model for e in kept],
        user_id=[e.user_id for e in kept],
        end_user=[e.end_user for e in kept],
        source=[e.source for e in kept],
        prompt_tokens=[e.prompt_tokens for e in kept],
        completion_tokens=[e.completion_tokens for e in kept],
        cached=[e.cached for e in kept],
        cost_micros=[cost for cost, _ in prices],
        priced=[priced for _, priced in prices],
        payload_sha256=[sha for _, sha in unique.values()],
    )
    # Every event id of the batch is settled, redeliveries too: an earlier attempt may have
    # committed the ledger and stopped before Redis; the settle script's marker makes it once.
    settlements = [
        Settlement(
            tenant_id=e.tenant_id,
            event_id=e.event_id,
            request_id=e.request_id,
            reserved_day=e.reservation.period_day,
            usage_day=day,
            tokens=e.prompt_tokens + e.completion_tokens,
            cost_micros=cost,
            end_user=e.end_user,
        )
        for e, day, (cost, _) in zip(kept, days, prices, strict=True)
    ]
    return rows, settlements


def crossed_alerts(
    *,
    tenant_id: uuid.UUID,
    kind: BudgetKind,
    day: date,
    used: int,
    limit: int,
    thresholds: Sequence[int],
) -> list[AlertRow]:
    """The thresholds (and 100 %) that ``used`` has reached; a limit of 0 is not watched."""
    if limit <= 0:
        return []
    period = period_label(kind, day)
    return [
        AlertRow(tenant_id, kind.value, period, pct, used, limit)
        for pct in (*thresholds, EXHAUSTED_PERCENT)
        if used * 100 >= limit * pct
    ]


async def _budget_alerts(
    conn: AsyncConnection,
    *,
    touched_days: set[tuple[uuid.UUID, date]],
    directory: TenantDirectory,
    thresholds: Sequence[int],
) -> list[AlertRow]:
    watched = {(t, d) for t, d in touched_days if directory.budgets_of(t) is not None}
    if not watched:
        return []
    day_keys = sorted(watched)
    month_keys = sorted({(t, first_of_month(d)) for t, d in watched})
    day_used = await repo.day_token_totals(conn, keys=day_keys)
    month_used = await repo.month_spend_totals(conn, keys=month_keys)
    alerts: list[AlertRow] = []
    for tenant_id, day in day_keys:
        config = directory.budgets_of(tenant_id)
        assert config is not None
        alerts += crossed_alerts(
            tenant_id=tenant_id,
            kind=BudgetKind.DAILY_TOKENS,
            day=day,
            used=day_used.get((tenant_id, day), 0),
            limit=config.daily_token_budget,
            thresholds=thresholds,
        )
    for tenant_id, month in month_keys:
        config = directory.budgets_of(tenant_id)
        assert config is not None
        alerts += crossed_alerts(
            tenant_id=tenant_id,
            kind=BudgetKind.MONTHLY_SPEND,
            day=month,
            used=month_used.get((tenant_id, month), 0),
            limit=config.monthly_spend_budget_micros,
            thresholds=thresholds,
        )
    return alerts


async def record_usage(
    *,
    engine: AsyncEngine,
    events: Sequence[UsageRecorded],
    catalogue: Mapping[str, ModelSpec],
    directory: TenantDirectory,
    thresholds: Sequence[int],
) -> RecordedBatch:
    """Write a batch into the ledger once per event id, with its aggregates and budget alerts,
    in one transaction. The same id with a different payload is refused (PermanentError)."""
    rows, settlements = ledger_columns(events, catalogue)
    async with engine.begin() as conn:
        written = await repo.record_ledger_batch(conn, rows=rows)
        recorded = len(rows)
        if written.inserted is not None:
            # Some ids were in the ledger already: each must hold this very payload.
            keys = rows.keys()
            fingerprints = dict(zip(keys, rows.payload_sha256, strict=True))
            seen_before = [k for k in keys if k not in written.inserted]
            stored = await repo.ledger_fingerprints(conn, keys=seen_before)
            for key in seen_before:
                if stored.get(key) != fingerprints[key]:
                    raise PermanentError(
                        f"usage event {key[1]} is already in the ledger with a different payload"
                    )
            recorded -= len(seen_before)
        alerts = await _budget_alerts(
            conn,
            touched_days={(a.tenant_id, a.period) for a in written.added},
            directory=directory,
            thresholds=thresholds,
        )
        alerts_recorded = await repo.insert_alerts(conn, alerts=alerts)
    return RecordedBatch(
        recorded=recorded,
        duplicates=len(events) - recorded,
        settlements=settlements,
        daily=written.daily,
        added=written.added,
        alerts_recorded=alerts_recorded,
        tenants=set(rows.tenant_id),
    )


async def evaluate_budgets(
    *,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    day: date,
    directory: TenantDirectory,
    thresholds: Sequence[int],
) -> int:
    """Re-check one tenant's day and month against its (possibly new) budgets."""
    async with engine.begin() as conn:
        alerts = await _budget_alerts(
            conn, touched_days={(tenant_id, day)}, directory=directory, thresholds=thresholds
        )
        return await repo.insert_alerts(conn, alerts=alerts)


# --------------------------------------------------------------------------- budget events


def budget_events(
    alert: AlertRow,
) -> tuple[BudgetThresholdCrossed | BudgetExhausted, AuditRecorded]:
    """The budget event and its audit record for an alert (ids derived: republishing is safe)."""
    kind = BudgetKind(alert.kind)
    alert_id = derived_id(
        alert.tenant_id, f"budget:{alert.kind}:{alert.period}:{alert.threshold_percent}"
    )
    event: BudgetThresholdCrossed | BudgetExhausted
    if alert.threshold_percent >= EXHAUSTED_PERCENT:
        event = BudgetExhausted(
            event_id=alert_id,
            tenant_id=alert.tenant_id,
            kind=kind,
            period=alert.period,
            used=alert.used,
            limit=alert.limit,
        )
        action = "exhausted"
    else:
        event = BudgetThresholdCrossed(
            event_id=alert_id,
            tenant_id=alert.tenant_id,
            kind=kind,
            period=alert.period,
            used=alert.used,
            limit=alert.limit,
            threshold_percent=alert.threshold_percent,
        )
        action = "threshold_crossed"
    audit = AuditRecorded(
        event_id=derived_id(alert_id, "audit"),
        tenant_id=alert.tenant_id,
        audit_type=AuditType.BUDGET,
        source="metering",
        resource_type="budget",
        resource_id=f"{alert.kind}:{alert.period}",
        action=action,
        status=AuditStatus.SUCCESS,
        details={
            "kind": alert.kind,
            "period": alert.period,
            "threshold_percent": alert.threshold_percent,
            "used": alert.used,
            "limit": alert.limit,
        },
    )
    return event, audit


def rollup_event(row: AggregateRow) -> UsageRolledUp:
    """The analysts' record of one tenant's day and model (id derived from its content)."""
    return UsageRolledUp(
        event_id=derived_id(
            row.tenant_id, f"rollup:{row.period}:{row.model}:{row.requests}:{row.cost_micros}"
        ),
        tenant_id=row.tenant_id,
        day=row.period,
        model=row.model,
        requests=row.requests,
        cached_requests=row.cached_requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_micros=row.cost_micros,
    )


# --------------------------------------------------------------------------- reconciliation


async def reconcile(
    *,
    engine: AsyncEngine,
    budgets: BudgetStore,
    today: date,
    days_back: int,
    budgeting_end_users: Collection[uuid.UUID] = (),
) -> int:
    """Set Redis's settled totals to the ledger's for every tenant with recent usage, and
    those of each end user of the tenants in ``budgeting_end_users`` (their end users' daily
    budgets; the others' end users are settled into Redis too, but nothing reads them).

    Call it while no settlement is between its ledger commit and its Redis update (the
    caller holds the settlement lock), or a settlement could be counted twice.
    Returns how many (tenant, day) pairs were reconciled.
    """
    since = today - timedelta(days=days_back)
    days = [since + timedelta(days=i) for i in range(days_back + 1)]
    async with engine.connect() as conn:
        tenants = await repo.tenants_with_usage_since(conn, since=since)
        if not tenants:
            return 0
        day_keys = [(t, d) for t in tenants for d in days]
        month_keys = sorted({(t, first_of_month(d)) for t, d in day_keys})
        day_used = await repo.day_token_totals(conn, keys=day_keys)
        month_used = await repo.month_spend_totals(conn, keys=month_keys)
        end_users_used = await repo.end_user_day_token_totals(
            conn, keys=[(t, d) for t, d in day_keys if t in budgeting_end_users]
        )
    for tenant_id, day in day_keys:
        await budgets.reconcile(
            tenant_id=tenant_id,
            day=day,
            ledger_tokens=day_used.get((tenant_id, day), 0),
            ledger_spend_micros=month_used.get((tenant_id, first_of_month(day)), 0),
        )
    for (tenant_id, day, end_user), tokens in end_users_used.items():
        await budgets.reconcile_end_user(
            tenant_id=tenant_id, end_user=end_user, day=day, ledger_tokens=tokens
        )
    return len(day_keys)


def utc_today() -> date:
    return utcnow().date()
