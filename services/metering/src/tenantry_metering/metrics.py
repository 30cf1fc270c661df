"""Metering's Prometheus counters (tenant ids are fine as labels; never content)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class MeteringMetrics:
    """Tokens and cost per tenant and model, and how usage events ended."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "tenantry_metering_tokens_total",
            "Tokens recorded in the ledger, by tenant, model and kind (prompt/completion).",
            ["tenant_id", "model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "tenantry_metering_cost_micros_total",
            "Cost recorded in the ledger in micro-dollars, by tenant and model.",
            ["tenant_id", "model"],
            registry=registry,
        )
        self.events = Counter(
            "tenantry_metering_usage_events_total",
            "Usage events handled: recorded, or duplicate (already in the ledger).",
            ["outcome"],
            registry=registry,
        )
        self.unpriced = Counter(
            "tenantry_metering_unpriced_usage_total",
            "Usage of models missing from the catalogue (recorded at cost 0, flagged).",
            ["model"],
            registry=registry,
        )
        self.alerts = Counter(
            "tenantry_metering_budget_alerts_published_total",
            "Budget events published, by kind and threshold.",
            ["kind", "threshold_percent"],
            registry=registry,
        )
        self.reconciled = Counter(
            "tenantry_metering_reconciled_total",
            "Tenant-days whose Redis counters were reset to the ledger's totals.",
            registry=registry,
        )
