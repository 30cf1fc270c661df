"""Metering's pure logic: pricing, alert thresholds, config versions, reports."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from tenantry_common.events import BudgetKind, Reservation, UsageRecorded
from tenantry_common.settings import LOCAL_MODEL, default_catalogue
from tenantry_metering.api import build_report, report_csv
from tenantry_metering.repository import AggregateRow
from tenantry_metering.service import (
    TenantDirectory,
    budget_events,
    crossed_alerts,
    fingerprint,
    price,
)

pytestmark = pytest.mark.unit

TENANT = uuid.uuid4()


def _usage(**changes: object) -> UsageRecorded:
    base = UsageRecorded(
        tenant_id=TENANT,
        occurred_at=datetime(2025, 1, 31, 23, 59, tzinfo=UTC),
        request_id=uuid.uuid4(),
        user_id="u",
        model=LOCAL_MODEL,
        prompt_tokens=1_000,
        completion_tokens=3,
        reservation=Reservation(reserved_tokens=10, period_day=date(2025, 1, 31)),
        source="test",
    )
    return base.model_copy(update=changes)


def test_price_is_integer_micros_rounded_up_and_unknown_models_are_flagged_at_zero() -> None:
    catalogue = default_catalogue()
    cost, priced = price(catalogue=catalogue, event=_usage())
    # (1000 * 50,000 + 3 * 100,000) / 1,000,000 = 50.3, rounded up to 51 micro-dollars.
    assert (cost, priced) == (51, True)
    assert isinstance(cost, int)
    assert price(catalogue=catalogue, event=_usage(model="nope")) == (0, False)


def test_fingerprint_is_stable_across_serialisations_and_differs_on_any_change() -> None:
    event = _usage()
    again = UsageRecorded.model_validate_json(event.model_dump_json())
    assert fingerprint(event) == fingerprint(again)
    assert fingerprint(event) != fingerprint(_usage(completion_tokens=4))


def test_crossed_alerts_at_80_and_100_percent_and_zero_limit_unwatched() -> None:
    day = date(2025, 2, 3)

    def pcts(used: int, limit: int) -> list[int]:
        return [
            a.threshold_percent
            for a in crossed_alerts(
                tenant_id=TENANT,
                kind=BudgetKind.DAILY_TOKENS,
                day=day,
                used=used,
                limit=limit,
                thresholds=(80,),
            )
        ]

    assert pcts(799, 1000) == []
    assert pcts(800, 1000) == [80]
    assert pcts(1000, 1000) == [80, 100]
    assert pcts(5, 0) == []
    (monthly,) = crossed_alerts(
        tenant_id=TENANT, kind=BudgetKind.MONTHLY_SPEND, day=day, used=9, limit=10, thresholds=(80,)
    )
    assert monthly.period == "2025-02"


def test_budget_event_ids_are_derived_so_republishing_is_idempotent() -> None:
    (alert,) = crossed_alerts(
        tenant_id=TENANT,
        kind=BudgetKind.DAILY_TOKENS,
        day=date(2025, 2, 3),
        used=85,
        limit=100,
        thresholds=(80,),
    )
    first, audit1 = budget_events(alert)
    second, audit2 = budget_events(alert)
    assert first.event_id == second.event_id
    assert audit1.event_id == audit2.event_id
    assert first.event_type == "BudgetThresholdCrossed"
    assert audit1.audit_type == "budget"


def test_directory_keeps_the_newest_config_version_and_drops_offboarded_budgets() -> None:
    from metering_unit_kit import config_event

    directory = TenantDirectory()
    assert directory.apply(config_event(TENANT, version=2, daily=200))
    assert not directory.apply(config_event(TENANT, version=1, daily=100))
    budgets = directory.budgets_of(TENANT)
    assert budgets is not None
    assert budgets.daily_token_budget == 200
    directory.offboarded.add(TENANT)
    assert directory.budgets_of(TENANT) is None


def test_report_sums_periods_with_budget_percent_and_remaining() -> None:
    rows = [
        AggregateRow(TENANT, date(2025, 2, 3), "a", 2, 0, 300, 100, 7, 0),
        AggregateRow(TENANT, date(2025, 2, 3), "=b", 1, 1, 100, 0, 0, 1),
    ]
    report = build_report(
        tenant_id=TENANT,
        period="day",
        start=date(2025, 2, 1),
        end=date(2025, 2, 28),
        rows=rows,
        directory=TenantDirectory(),
    )
    (summary,) = report.periods
    assert (summary.total_tokens, summary.cost_micros, summary.budget_limit) == (500, 7, None)
    text = report_csv(report)
    assert text.splitlines()[0].startswith("period,model,requests")
    assert "\n2025-02-03,'=b," in text
