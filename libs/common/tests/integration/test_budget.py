"""The shared budget module against the real Redis: atomic reservations, exactly-once settlement."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import pytest
from tenantry_common.budget import BudgetStore, RefusalReason

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 23)


async def test_concurrent_reservations_never_overshoot_the_limit(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant = uuid.uuid4()
    results = await asyncio.gather(
        *(
            store.reserve(
                tenant_id=tenant, request_id=uuid.uuid4(), tokens=100, day=DAY, daily_limit=1_050
            )
            for _ in range(50)
        )
    )
    granted = [r for r in results if r.granted]
    assert len(granted) == 10
    assert all(r.refusal == RefusalReason.DAILY_TOKENS for r in results if not r.granted)
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert snap.tokens_reserved == 1_000


async def test_settlement_is_applied_once_per_event_and_releases_the_hold(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant, request, event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.reserve(
        tenant_id=tenant, request_id=request, tokens=300, day=DAY, daily_limit=10_000
    )
    for _ in range(3):
        await store.settle(
            tenant_id=tenant,
            event_id=event,
            request_id=request,
            reserved_day=DAY,
            usage_day=DAY,
            tokens=120,
            cost_micros=7,
        )
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved, snap.spend_used_micros) == (120, 0, 7)


async def test_exhausted_monthly_spend_refuses_reservations(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant = uuid.uuid4()
    await store.settle(
        tenant_id=tenant,
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        reserved_day=DAY,
        usage_day=DAY,
        tokens=1,
        cost_micros=500,
    )
    result = await store.reserve(
        tenant_id=tenant,
        request_id=uuid.uuid4(),
        tokens=1,
        day=DAY,
        daily_limit=10,
        monthly_spend_limit_micros=500,
    )
    assert not result.granted
    assert result.refusal == RefusalReason.MONTHLY_SPEND


async def test_tenants_have_separate_budgets(redis_client) -> None:
    store = BudgetStore(redis_client)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert (
        await store.reserve(
            tenant_id=a, request_id=uuid.uuid4(), tokens=10, day=DAY, daily_limit=10
        )
    ).granted
    assert (
        await store.reserve(
            tenant_id=b, request_id=uuid.uuid4(), tokens=10, day=DAY, daily_limit=10
        )
    ).granted
    assert not (
        await store.reserve(tenant_id=a, request_id=uuid.uuid4(), tokens=1, day=DAY, daily_limit=10)
    ).granted


async def test_reconcile_sets_settled_totals_to_the_ledger_and_recounts_holds(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant, request = uuid.uuid4(), uuid.uuid4()
    await store.reserve(tenant_id=tenant, request_id=request, tokens=50, day=DAY, daily_limit=1_000)
    await redis_client.hset(store._tokens(tenant, DAY), mapping={"used": 999, "reserved": 7})
    await store.reconcile(tenant_id=tenant, day=DAY, ledger_tokens=120, ledger_spend_micros=33)
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved, snap.spend_used_micros) == (120, 50, 33)
