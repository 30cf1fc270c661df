"""Two edge processes (uvicorn) sharing Postgres, Redis and the broker: answers reach the
replica holding the request, revocation and offboarding are refused at once on both, and rate
limits and budgets hold across both."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from auth_support import bearer, get_token
from tenantry_common.redis import create_redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


async def _clients(replicas):
    return [httpx.AsyncClient(base_url=r.url, timeout=30) for r in replicas]


async def test_each_replica_leases_its_own_reply_partition(
    replicas, edge_settings, edge_app
) -> None:
    redis = create_redis(edge_settings.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{edge_settings.reply_lease_namespace}:*")]
        owners = {k.decode(): (await redis.get(k)).decode() for k in keys}
    finally:
        await redis.aclose()
    assert len(owners) == 3  # the in-process edge and two processes
    assert len(set(owners.values())) == 3


async def test_answers_reach_the_replica_that_holds_the_request(
    replicas, tenant, responder
) -> None:
    clients = await _clients(replicas)
    try:
        results = await asyncio.gather(
            *(
                c.post("/v1/chat", json={"question": f"q{i}"}, headers=bearer(tenant.member_token))
                for i, c in enumerate(clients * 3)
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    assert [r.status_code for r in results] == [200] * 6
    partitions = {q.reply_to.partition for q in responder.for_tenant(tenant.tenant_id)}
    assert len(partitions) == 2


async def test_real_sse_stream_over_http(replicas, tenant, responder) -> None:
    async with (
        httpx.AsyncClient(base_url=replicas[0].url, timeout=30) as c,
        c.stream(
            "POST",
            "/v1/chat",
            json={"question": "stream", "stream": True},
            headers=bearer(tenant.member_token),
        ) as r,
    ):
        assert r.status_code == 200
        chunks = [chunk async for chunk in r.aiter_text()]
    text = "".join(chunks)
    assert text.count("event: delta") == 3
    assert "event: completed" in text


async def test_revocation_is_refused_immediately_on_both_replicas(replicas, tenant) -> None:
    one, two = await _clients(replicas)
    try:
        made = (
            await one.post(
                "/v1/clients", json={"role": "member"}, headers=bearer(tenant.admin_token)
            )
        ).json()
        token = await get_token(one, made["client_id"], made["client_secret"])
        path = f"/v1/tenants/{tenant.tenant_id}"
        assert (await one.get(path, headers=bearer(token))).status_code == 200
        assert (await two.get(path, headers=bearer(token))).status_code == 200
        assert (
            await two.delete(f"/v1/clients/{made['client_id']}", headers=bearer(tenant.admin_token))
        ).status_code == 204
        # No waiting: the very next request on either replica is refused.
        assert (await one.get(path, headers=bearer(token))).status_code == 401
        assert (await two.get(path, headers=bearer(token))).status_code == 401
    finally:
        await one.aclose()
        await two.aclose()


async def test_offboarding_is_refused_immediately_on_both_replicas(
    replicas, tenant, operator_token
) -> None:
    one, two = await _clients(replicas)
    try:
        path = f"/v1/tenants/{tenant.tenant_id}"
        for c in (one, two):
            assert (await c.get(path, headers=bearer(tenant.member_token))).status_code == 200
        assert (await one.delete(path, headers=bearer(operator_token))).status_code == 202
        for c in (one, two):
            for token in (tenant.admin_token, tenant.member_token):
                assert (await c.get(path, headers=bearer(token))).status_code == 401
            r = await c.post(
                "/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token)
            )
            assert r.status_code == 401
    finally:
        await one.aclose()
        await two.aclose()


async def test_rate_limit_holds_across_two_replicas(replicas, tenant, responder) -> None:
    one, two = await _clients(replicas)
    try:
        r = await one.put(
            "/v1/config", json={"rate_limit_per_minute": 5}, headers=bearer(tenant.admin_token)
        )
        assert r.status_code == 200
        results = await asyncio.gather(
            *(
                c.post("/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token))
                for c in [one, two] * 6
            )
        )
    finally:
        await one.aclose()
        await two.aclose()
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 5 + [429] * 7


async def test_token_budget_holds_across_two_replicas(replicas, tenant, responder) -> None:
    one, two = await _clients(replicas)
    try:
        r = await one.put(
            "/v1/config",
            json={"max_tokens_per_request": 1000, "daily_token_budget": 10_000},
            headers=bearer(tenant.admin_token),
        )
        assert r.status_code == 200
        results = await asyncio.gather(
            *(
                c.post("/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token))
                for c in [one, two] * 5
            )
        )
    finally:
        await one.aclose()
        await two.aclose()
    granted = list(responder.for_tenant(tenant.tenant_id))
    reserved = sum(q.reservation.reserved_tokens for q in granted)
    assert reserved <= 10_000
    assert len(granted) == 10_000 // granted[0].reservation.reserved_tokens
    assert sorted({r.status_code for r in results}) == [200, 429]
    assert sum(r.status_code == 200 for r in results) == len(granted)
    assert all("budget" in r.json()["detail"] for r in results if r.status_code == 429)
