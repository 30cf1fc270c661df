"""Tenant configurations held in memory for the chat path (``configs.ConfigCache``): no Postgres
query per chat request in the steady state, a change through one replica used by another for
the very next request, never another tenant's config, and access still refused at once."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from auth_support import bearer
from sqlalchemy import event
from tenantry_auth.access import CONFIG_VERSION_FIELD, access_key
from tenantry_common.redis import create_redis

pytestmark = pytest.mark.integration

_counting: contextvars.ContextVar[bool] = contextvars.ContextVar("counting", default=False)


@contextmanager
def statements_of_this_task(edge_app: Any) -> Iterator[list[str]]:
    """SQL the in-process edge runs on behalf of this test's requests (its background jobs,
    which started in another context, are not counted)."""
    engine = edge_app.state.edge.sessions.kw["bind"].sync_engine
    seen: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _counting.get():
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", on_execute)
    token = _counting.set(True)
    try:
        yield seen
    finally:
        _counting.reset(token)
        event.remove(engine, "before_cursor_execute", on_execute)


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


def _asked(responder: Any, tenant_id: uuid.UUID, question: str) -> Any:
    [request] = [q for q in responder.for_tenant(tenant_id) if q.question == question]
    return request


async def test_chat_runs_no_postgres_query_in_the_steady_state(
    client, tenant, responder, edge_app
) -> None:
    member = bearer(tenant.member_token)
    warm = await client.post("/v1/chat", json={"question": "warm up"}, headers=member)
    assert warm.status_code == 200, warm.text
    hits_before = edge_app.state.edge.configs.hits
    completion = {"messages": [{"role": "user", "content": "and now?"}]}
    with statements_of_this_task(edge_app) as statements:
        for i in range(5):
            r = await client.post("/v1/chat", json={"question": f"q{i}"}, headers=member)
            assert r.status_code == 200, r.text
            r = await client.post("/v1/chat/completions", json=completion, headers=member)
            assert r.status_code == 200, r.text
    assert statements == []
    assert edge_app.state.edge.configs.hits - hits_before == 10


async def test_a_config_read_the_first_time_is_recorded_in_redis(
    client, tenant, responder, edge_settings
) -> None:
    redis = create_redis(edge_settings.redis_url)
    try:
        await redis.hdel(access_key(tenant.tenant_id), CONFIG_VERSION_FIELD)  # as if lost
        r = await client.post(
            "/v1/chat", json={"question": "first"}, headers=bearer(tenant.member_token)
        )
        assert r.status_code == 200, r.text
        recorded = await redis.hget(access_key(tenant.tenant_id), CONFIG_VERSION_FIELD)
    finally:
        await redis.aclose()
    assert int(recorded) == 1  # a new tenant's configuration version
    assert _asked(responder, tenant.tenant_id, "first").options.config_version == 1


async def test_a_config_change_through_one_replica_is_used_by_the_other_at_once(
    replicas, tenant, responder
) -> None:
    one, two = (httpx.AsyncClient(base_url=r.url, timeout=30) for r in replicas)
    member, admin = bearer(tenant.member_token), bearer(tenant.admin_token)
    try:
        for c in (one, two):  # both replicas hold version 1
            assert (await c.post("/v1/chat", json={"question": "warm"}, headers=member)).is_success
        for limit, writer, reader in ((300, one, two), (200, two, one), (100, one, two)):
            put = await writer.put(
                "/v1/config", json={"max_tokens_per_request": limit}, headers=admin
            )
            assert put.status_code == 200, put.text
            question = f"right after the change to {limit}"
            # No waiting: the very next request on the other replica uses the new version.
            r = await reader.post("/v1/chat", json={"question": question}, headers=member)
            assert r.status_code == 200, r.text
            asked = _asked(responder, tenant.tenant_id, question)
            assert asked.options.config_version == put.json()["version"]
            assert asked.options.max_tokens == limit
    finally:
        await one.aclose()
        await two.aclose()


async def test_each_tenant_gets_its_own_config_through_a_warm_replica(
    client, onboard, responder
) -> None:
    tenants = [await onboard(tier="pro") for _ in range(2)]
    limits = {tenants[0].tenant_id: 111, tenants[1].tenant_id: 222}
    for t in tenants:
        r = await client.put(
            "/v1/config",
            json={"max_tokens_per_request": limits[t.tenant_id]},
            headers=bearer(t.admin_token),
        )
        assert r.status_code == 200, r.text
    for i in range(3):
        for t in tenants:
            question = f"whose config? {i}"
            r = await client.post(
                "/v1/chat", json={"question": question}, headers=bearer(t.member_token)
            )
            assert r.status_code == 200, r.text
            asked = _asked(responder, t.tenant_id, question)
            assert asked.options.max_tokens == limits[t.tenant_id]


async def test_revocation_and_offboarding_are_refused_at_once_with_warm_configs(
    replicas, tenant, operator_token, responder
) -> None:
    one, two = (httpx.AsyncClient(base_url=r.url, timeout=30) for r in replicas)
    member, admin = bearer(tenant.member_token), bearer(tenant.admin_token)
    try:
        made = (await one.post("/v1/clients", json={"role": "member"}, headers=admin)).json()
        token = (
            await one.post(
                "/v1/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": made["client_id"],
                    "client_secret": made["client_secret"],
                },
            )
        ).json()["access_token"]
        for c in (one, two):
            for who in (member, bearer(token)):
                r = await c.post("/v1/chat", json={"question": "warm"}, headers=who)
                assert r.status_code == 200, r.text
        assert (
            await two.delete(f"/v1/clients/{made['client_id']}", headers=admin)
        ).status_code == 204
        for c in (one, two):
            r = await c.post("/v1/chat", json={"question": "q"}, headers=bearer(token))
            assert r.status_code == 401
        path = f"/v1/tenants/{tenant.tenant_id}"
        assert (await one.delete(path, headers=bearer(operator_token))).status_code == 202
        for c in (one, two):
            r = await c.post("/v1/chat", json={"question": "q"}, headers=member)
            assert r.status_code == 401
    finally:
        await one.aclose()
        await two.aclose()
