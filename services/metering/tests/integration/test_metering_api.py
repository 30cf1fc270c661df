"""The usage query API: tenant from a verified token, JSON and CSV, and tenant isolation."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime

import pytest
from faststream.kafka import KafkaBroker
from metering_testkit import TestIssuer, config_changed, ledger_count, running, usage, wait_until
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.messaging import publish_event
from tenantry_common.settings import LOCAL_MODEL, default_catalogue
from tenantry_common.topics import TENANTS_CONFIG, USAGE
from tenantry_metering import repository as repo
from tenantry_metering.config import Settings

pytestmark = pytest.mark.integration

PRICE = default_catalogue()[LOCAL_MODEL]
DAY = datetime(2025, 7, 14, 8, tzinfo=UTC)


async def test_usage_query_json_and_csv_show_only_the_token_tenants_usage(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker, issuer: TestIssuer
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    async with running(metering_settings, issuer) as (app, http):
        await publish_event(
            producer, TENANTS_CONFIG, config_changed(a, daily_tokens=2_000, monthly_micros=1_000)
        )
        await publish_event(producer, USAGE, usage(a, prompt=300, completion=200, occurred_at=DAY))
        # A model missing from the catalogue, named like a spreadsheet formula.
        await publish_event(
            producer,
            USAGE,
            usage(a, prompt=10, completion=0, model="=HYPERLINK(1)", occurred_at=DAY),
        )
        await publish_event(producer, USAGE, usage(b, prompt=7_777, completion=1, occurred_at=DAY))

        async def recorded() -> bool:
            return await ledger_count(engine, a) == 2 and await ledger_count(engine, b) == 1

        await wait_until(recorded, what="usage recorded")
        await wait_until(lambda: _known(app, a), what="config known")
        query = {"period": "day", "start": "2025-07-01", "end": "2025-07-31"}

        response = await http.get(
            "/v1/usage", params=query, headers=issuer.headers(tenant_id=a, role="admin")
        )
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["tenant_id"] == str(a)
        assert sorted(line["model"] for line in report["lines"]) == ["=HYPERLINK(1)", LOCAL_MODEL]
        assert all(line["prompt_tokens"] != 7_777 for line in report["lines"])
        (day,) = report["periods"]
        assert (day["period"], day["total_tokens"], day["budget_limit"]) == (
            "2025-07-14",
            510,
            2_000,
        )
        assert (day["percent_used"], day["remaining"]) == (25.5, 1_490)
        assert day["cost_micros"] == PRICE.cost_micros(300, 200)

        month = await http.get(
            "/v1/usage",
            params={"period": "month", "start": "2025-07-01", "end": "2025-07-31"},
            headers=issuer.headers(tenant_id=a, role="admin"),
        )
        (summary,) = month.json()["periods"]
        assert summary["budget_kind"] == "monthly_spend"
        assert summary["budget_used"] == PRICE.cost_micros(300, 200)

        csv_response = await http.get(
            "/v1/usage",
            params=query | {"format": "csv"},
            headers=issuer.headers(tenant_id=a, role="admin"),
        )
        assert csv_response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(csv_response.text)))
        assert sorted(r["model"] for r in rows) == ["'=HYPERLINK(1)", LOCAL_MODEL]
        assert "7777" not in csv_response.text

        # Tenant A's token never reaches B: not by the own-tenant path, not by B's path.
        forbidden = await http.get(
            f"/v1/tenants/{b}/usage",
            params=query,
            headers=issuer.headers(tenant_id=a, role="admin"),
        )
        assert forbidden.status_code == 403
        member = await http.get(
            "/v1/usage", params=query, headers=issuer.headers(tenant_id=a, role="member")
        )
        assert member.status_code == 403
        assert (await http.get("/v1/usage", params=query)).status_code == 401
        forged = TestIssuer().headers(tenant_id=b, role="operator")
        assert (
            await http.get(f"/v1/tenants/{b}/usage", params=query, headers=forged)
        ).status_code == 401

        operator = await http.get(
            f"/v1/tenants/{b}/usage",
            params=query,
            headers=issuer.headers(tenant_id=uuid.UUID(int=0), role="operator"),
        )
        assert operator.status_code == 200
        assert [line["prompt_tokens"] for line in operator.json()["lines"]] == [7_777]

        bad = await http.get(
            "/v1/usage",
            params={"start": "2025-07-31", "end": "2025-07-01"},
            headers=issuer.headers(tenant_id=a, role="admin"),
        )
        assert bad.status_code == 400
        assert "start" in bad.json()["detail"]


async def _known(app, tenant: uuid.UUID) -> bool:
    return app.state.runtime.directory.budgets_of(tenant) is not None


async def test_usage_per_end_user_lists_the_tenants_own_costliest_first(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker, issuer: TestIssuer
) -> None:
    """Usage the requests named an end user for, summed per end user over the days asked:
    only the token tenant's, the costliest first, cut at ``limit`` (``more`` says so), in JSON
    and CSV (a name that a spreadsheet would run is neutralised); requests without an end user
    are not listed."""
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [
        usage(a, prompt=300, completion=200, occurred_at=DAY, end_user="user-big"),
        usage(a, prompt=100, completion=100, occurred_at=DAY, end_user="user-big"),
        usage(a, prompt=10, completion=5, occurred_at=DAY, end_user="=cmd|x"),
        usage(a, prompt=1, completion=1, occurred_at=DAY, end_user="user-small"),
        usage(a, prompt=900, completion=900, occurred_at=DAY),  # names no end user
        usage(
            a,
            prompt=5,
            completion=5,
            occurred_at=datetime(2025, 6, 1, tzinfo=UTC),
            end_user="user-june",
        ),
        usage(b, prompt=7_777, completion=1, occurred_at=DAY, end_user="user-big"),
    ]
    async with running(metering_settings, issuer) as (app, http):
        # Tenant a budgets its end users: the report says how much each may use per day.
        await publish_event(
            producer,
            TENANTS_CONFIG,
            config_changed(a, daily_tokens=10**6, monthly_micros=10**9, end_user_daily_tokens=600),
        )
        await wait_until(lambda: _known(app, a), what="config known")
        for event in events:
            await publish_event(producer, USAGE, event)

        async def recorded() -> bool:
            return await ledger_count(engine, a) == 6 and await ledger_count(engine, b) == 1

        await wait_until(recorded, what="usage recorded")
        query = {"start": "2025-07-01", "end": "2025-07-31"}
        admin = issuer.headers(tenant_id=a, role="admin")
        response = await http.get("/v1/usage/end-users", params=query, headers=admin)
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["tenant_id"] == str(a)
        assert report["more"] is False
        assert report["end_user_daily_token_budget"] == 600
        listed = [(u["end_user"], u["requests"], u["total_tokens"]) for u in report["end_users"]]
        assert listed == [("user-big", 2, 700), ("=cmd|x", 1, 15), ("user-small", 1, 2)]
        assert report["end_users"][0]["cost_micros"] == PRICE.cost_micros(
            300, 200
        ) + PRICE.cost_micros(100, 100)

        cut = await http.get("/v1/usage/end-users", params=query | {"limit": 1}, headers=admin)
        assert [u["end_user"] for u in cut.json()["end_users"]] == ["user-big"]
        assert cut.json()["more"] is True

        csv_response = await http.get(
            "/v1/usage/end-users", params=query | {"format": "csv"}, headers=admin
        )
        rows = list(csv.DictReader(io.StringIO(csv_response.text)))
        assert [r["end_user"] for r in rows] == ["user-big", "'=cmd|x", "user-small"]

        member = issuer.headers(tenant_id=a, role="member")
        assert (
            await http.get("/v1/usage/end-users", params=query, headers=member)
        ).status_code == 403
        assert (
            await http.get(f"/v1/tenants/{b}/usage/end-users", params=query, headers=admin)
        ).status_code == 403
        operator = issuer.headers(tenant_id=a, role="operator")
        theirs = await http.get(f"/v1/tenants/{b}/usage/end-users", params=query, headers=operator)
        assert [u["total_tokens"] for u in theirs.json()["end_users"]] == [7_778]
        assert theirs.json()["end_user_daily_token_budget"] == 0  # no config of b's known


async def test_operators_see_every_tenants_usage_the_costliest_first(
    metering_settings: Settings, engine: AsyncEngine, producer: KafkaBroker, issuer: TestIssuer
) -> None:
    """One line per tenant over the days asked (a day no other test uses), with its name and
    tier where metering holds its config; operators only."""
    small, big = uuid.uuid4(), uuid.uuid4()
    day = datetime(2023, 3, 17, 9, tzinfo=UTC)
    async with running(metering_settings, issuer) as (app, http):
        await publish_event(
            producer, TENANTS_CONFIG, config_changed(small, daily_tokens=9_000, monthly_micros=9)
        )
        for event in (
            usage(small, prompt=10, completion=5, occurred_at=day),
            usage(small, prompt=20, completion=5, occurred_at=day),
            usage(big, prompt=5_000, completion=1_000, occurred_at=day),  # config unknown here
        ):
            await publish_event(producer, USAGE, event)

        async def rolled_up() -> bool:
            async with engine.connect() as conn:
                rows = await repo.tenant_rows(conn, start=day.date(), end=day.date(), limit=10)
            return sum(r.requests for r in rows) == 3

        await wait_until(rolled_up, what="usage rolled up per day")
        await wait_until(lambda: _known(app, small), what="config known")
        query = {"start": "2023-03-17", "end": "2023-03-17"}
        operator = issuer.headers(tenant_id=uuid.UUID(int=0), role="operator")
        response = await http.get("/v1/usage/tenants", params=query, headers=operator)
        assert response.status_code == 200, response.text
        report = response.json()
        listed = [
            (t["tenant_id"], t["tenant_name"], t["tier"], t["requests"], t["total_tokens"])
            for t in report["tenants"]
        ]
        assert listed == [
            (str(big), None, None, 1, 6_000),
            (str(small), f"t-{small.hex[:6]}", "pro", 2, 40),
        ]
        assert report["tenants"][0]["cost_micros"] == PRICE.cost_micros(5_000, 1_000)
        assert report["more"] is False

        cut = await http.get("/v1/usage/tenants", params=query | {"limit": 1}, headers=operator)
        assert ([t["tenant_id"] for t in cut.json()["tenants"]], cut.json()["more"]) == (
            [str(big)],
            True,
        )
        csv_response = await http.get(
            "/v1/usage/tenants", params=query | {"format": "csv"}, headers=operator
        )
        rows = list(csv.DictReader(io.StringIO(csv_response.text)))
        assert [(r["tenant_id"], r["total_tokens"]) for r in rows] == [
            (str(big), "6000"),
            (str(small), "40"),
        ]
        for role in ("admin", "member"):
            refused = await http.get(
                "/v1/usage/tenants", params=query, headers=issuer.headers(tenant_id=big, role=role)
            )
            assert refused.status_code == 403, role
