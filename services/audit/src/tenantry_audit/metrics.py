"""Audit's Prometheus metrics (tenant ids are not labels: unbounded cardinality)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class AuditMetrics:
    """Counters of what the audit service did."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.appended = Counter(
            "tenantry_audit_records_appended_total",
            "Records appended to chains.",
            registry=registry,
        )
        self.duplicates = Counter(
            "tenantry_audit_duplicates_total", "Redelivered events stored once.", registry=registry
        )
        self.exports = Counter(
            "tenantry_audit_exports_total", "Exports started.", ["format"], registry=registry
        )
        self.verifications = Counter(
            "tenantry_audit_verifications_total", "Chain walks.", ["outcome"], registry=registry
        )
        self.retention_removed = Counter(
            "tenantry_audit_retention_removed_total",
            "Records removed by retention.",
            registry=registry,
        )
        self.retention_refused = Counter(
            "tenantry_audit_retention_refused_total",
            "Tenants whose expired records were kept because their chain is broken.",
            registry=registry,
        )
        self.anchors = Counter(
            "tenantry_audit_anchors_published_total", "Chain heads published.", registry=registry
        )
