"""One batch statement against the real Postgres: new rows, redeliveries and a conflicting id in
the same batch; aggregates that add exactly the new rows, across a day and a month boundary."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from metering_testkit import usage
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.messaging import PermanentError
from tenantry_common.settings import LOCAL_MODEL, default_catalogue
from tenantry_metering import repository, service
from tenantry_metering.app import prepare_database
from tenantry_metering.config import Settings

pytestmark = pytest.mark.integration

JAN_31 = datetime(2025, 1, 31, 23, 30, tzinfo=UTC)
FEB_1 = datetime(2025, 2, 1, 0, 30, tzinfo=UTC)


async def _record(engine: AsyncEngine, events: list) -> service.RecordedBatch:
    return await service.record_usage(
        engine=engine,
        events=events,
        catalogue=default_catalogue(),
        directory=service.TenantDirectory(),
        thresholds=(80,),
    )


async def _state(engine: AsyncEngine, tenant: uuid.UUID) -> tuple:
    async with engine.connect() as conn:
        totals = await repository.ledger_totals(conn, tenant_id=tenant)
        daily = await repository.daily_rows(
            conn, tenant_id=tenant, start=date(2025, 1, 1), end=date(2025, 2, 28)
        )
        monthly = await repository.monthly_rows(
            conn, tenant_id=tenant, start=date(2025, 1, 1), end=date(2025, 2, 1)
        )
    return totals, daily, monthly


async def test_a_batch_with_a_redelivery_counts_only_its_new_rows_and_a_conflict_commits_nothing(
    metering_settings: Settings, engine: AsyncEngine
) -> None:
    await prepare_database(metering_settings.postgres_dsn)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    a = usage(tenant, prompt=10, completion=1, occurred_at=JAN_31)
    b = usage(tenant, prompt=20, completion=2, occurred_at=FEB_1, model="gpt-4o-mini")
    c = usage(tenant, prompt=30, completion=3, occurred_at=FEB_1)
    d = usage(other, prompt=40, completion=4, occurred_at=JAN_31, model="unknown-model")

    first = await _record(engine, [a, b])
    assert (first.recorded, first.duplicates) == (2, 0)

    # Redeliveries of a (twice: in the ledger already, and twice in this batch) among new rows.
    second = await _record(engine, [c, a, d, a])
    assert (second.recorded, second.duplicates) == (2, 2)
    assert sorted((x.tenant_id, x.period, x.requests) for x in second.added) == sorted(
        [(tenant, FEB_1.date(), 1), (other, JAN_31.date(), 1)]
    )
    assert {s.event_id for s in second.settlements} == {a.event_id, c.event_id, d.event_id}
    # The daily rows as they now stand (tenant's Feb 1 local model row: b was gpt-4o-mini).
    now_standing = {(x.tenant_id, x.period, x.model): x.requests for x in second.daily}
    assert now_standing == {
        (tenant, FEB_1.date(), LOCAL_MODEL): 1,
        (other, JAN_31.date(), "unknown-model"): 1,
    }
    before = await _state(engine, tenant)

    forged = b.model_copy(update={"completion_tokens": 9_999})
    e = usage(tenant, prompt=50, completion=5, occurred_at=FEB_1)
    with pytest.raises(PermanentError, match="different payload"):
        await _record(engine, [e, forged])
    assert await _state(engine, tenant) == before, "nothing of the refused batch is committed"

    again = await _record(engine, [b, a, c])
    assert (again.recorded, again.duplicates, again.added, again.daily) == (0, 3, [], [])

    totals, daily, monthly = await _state(engine, tenant)
    assert (totals.events, totals.prompt_tokens, totals.completion_tokens) == (3, 60, 6)
    catalogue = default_catalogue()
    costs = {
        x.event_id: catalogue[x.model].cost_micros(x.prompt_tokens, x.completion_tokens)
        for x in (a, b, c)
    }
    assert totals.cost_micros == sum(costs.values())
    assert [(x.period, x.model, x.requests, x.total_tokens, x.cost_micros) for x in daily] == [
        (JAN_31.date(), LOCAL_MODEL, 1, 11, costs[a.event_id]),
        (FEB_1.date(), "gpt-4o-mini", 1, 22, costs[b.event_id]),
        (FEB_1.date(), LOCAL_MODEL, 1, 33, costs[c.event_id]),
    ]
    assert [(x.period, x.model, x.requests, x.total_tokens) for x in monthly] == [
        (date(2025, 1, 1), LOCAL_MODEL, 1, 11),
        (date(2025, 2, 1), "gpt-4o-mini", 1, 22),
        (date(2025, 2, 1), LOCAL_MODEL, 1, 33),
    ]
    other_totals, other_daily, _ = await _state(engine, other)
    assert (other_totals.events, other_totals.cost_micros) == (1, 0)
    assert other_daily[0].unpriced_requests == 1
