"""Searching a tenant's documents through the edge (``POST /v1/search``), with a stand-in for
retrieval on the reply partition: the shape, who may search, bad input, the rate limit, no
budget held, failures and the deadline."""

from __future__ import annotations

import asyncio

import pytest
from auth_support import bearer
from tenantry_common.budget import BudgetStore
from tenantry_common.ids import utcnow
from tenantry_common.redis import create_redis
from tenantry_common.topics import CHAT_RESPONSES

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


async def test_an_admin_search_returns_the_passages_best_first_for_the_tokens_tenant(
    client, tenant, responder, edge_app
) -> None:
    r = await client.post(
        "/v1/search",
        json={"query": "refund window", "top_k": 2},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"request_id", "corpus_version", "results"}
    assert body["corpus_version"] == 7
    assert [hit["chunk_index"] for hit in body["results"]] == [0, 1]
    assert set(body["results"][0]) == {"document_id", "chunk_index", "title", "text", "score"}
    assert body["results"][0]["text"] == f"passage 0 for refund window of {tenant.tenant_id}"
    assert r.headers["X-Request-Id"] == body["request_id"]
    assert r.headers["RateLimit-Limit"] == "120"
    [search] = [s for s in responder.searches if str(s.request_id) == body["request_id"]]
    # The tenant comes from the token; the search is answered on this replica's partition.
    assert search.tenant_id == tenant.tenant_id
    assert search.user_id.startswith(str(tenant.tenant_id))  # the admin client's id
    assert (search.query, search.top_k) == ("refund window", 2)
    assert search.reply_to.topic == CHAT_RESPONSES.name
    assert search.reply_to.partition == edge_app.state.replies.partition
    assert search.deadline_at is not None


async def test_top_k_defaults_to_four_and_members_may_not_search(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/search", json={"query": "defaults"}, headers=bearer(tenant.admin_token)
    )
    assert r.status_code == 200, r.text
    [search] = [s for s in responder.searches if str(s.request_id) == r.json()["request_id"]]
    assert search.top_k == 4
    before = len(responder.searches)
    member = await client.post(
        "/v1/search", json={"query": "members"}, headers=bearer(tenant.member_token)
    )
    assert member.status_code == 403, member.text
    assert "admin" in member.json()["detail"]
    assert len(responder.searches) == before, "nothing was published"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "q" * 16_001}, "query"),
        ({"query": "q", "top_k": 0}, "top_k"),
        ({"query": "q", "top_k": 51}, "top_k"),
        ({"query": "q", "top_k": "many"}, "top_k"),
        ({"query": "q", "tenant_id": "00000000-0000-0000-0000-000000000001"}, "tenant_id"),
        ([], "body"),
    ],
)
async def test_a_malformed_search_is_a_422_naming_the_field_and_publishes_nothing(
    client, tenant, responder, body: object, field: str
) -> None:
    before = len(responder.searches)
    r = await client.post("/v1/search", json=body, headers=bearer(tenant.admin_token))
    assert r.status_code == 422, r.text
    assert field in r.text
    assert len(responder.searches) == before


async def test_a_search_counts_against_the_rate_limit_and_holds_no_budget(
    client, tenant, responder, edge_settings
) -> None:
    admin = bearer(tenant.admin_token)
    r = await client.put("/v1/config", json={"rate_limit_per_minute": 2}, headers=admin)
    assert r.status_code == 200, r.text
    codes = [
        (await client.post("/v1/search", json={"query": f"q{i}"}, headers=admin)).status_code
        for i in range(2)
    ]
    refused = await client.post("/v1/search", json={"query": "third"}, headers=admin)
    assert [*codes, refused.status_code] == [200, 200, 429], refused.text
    assert "rate limit of 2 requests per minute" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    redis = create_redis(edge_settings.redis_url)
    try:
        snap = await BudgetStore(redis).snapshot(tenant_id=tenant.tenant_id, day=utcnow().date())
    finally:
        await redis.aclose()
    assert (snap.tokens_reserved, snap.tokens_used) == (0, 0), "a search asks no model"


async def test_a_failed_search_keeps_its_reason_and_a_lost_one_ends_at_the_deadline(
    client, tenant, responder, edge_settings
) -> None:
    admin = bearer(tenant.admin_token)
    failed = await client.post("/v1/search", json={"query": "[fail]"}, headers=admin)
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"] == "internal"
    assert failed.json()["detail"] == "store is down"
    started = asyncio.get_running_loop().time()
    lost = await client.post("/v1/search", json={"query": "[silent]"}, headers=admin)
    assert lost.status_code == 504, lost.text
    assert lost.json()["error"] == "deadline_exceeded"
    waited = asyncio.get_running_loop().time() - started
    assert edge_settings.chat_deadline_s - 0.5 <= waited


async def _document(client, tenant, title: str = "Refund policy") -> str:
    r = await client.post(
        "/v1/documents",
        json={"title": title, "text": "Items may be returned within 30 days."},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 202, r.text
    return str(r.json()["document_id"])


async def test_a_search_limited_to_some_documents_names_only_the_tenants_own(
    client, tenant, onboard, responder
) -> None:
    admin = bearer(tenant.admin_token)
    first, second = await _document(client, tenant), await _document(client, tenant, "Shipping")
    r = await client.post(
        "/v1/search",
        json={"query": "refunds", "document_ids": [second, first, second]},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    [search] = [s for s in responder.searches if str(s.request_id) == r.json()["request_id"]]
    assert [str(d) for d in search.document_ids] == [second, first], "each once, in order"

    other = await onboard(tier="pro")
    theirs = await _document(client, other)
    deleted = await _document(client, tenant, "Old")
    assert (await client.delete(f"/v1/documents/{deleted}", headers=admin)).status_code == 202
    unknown = "5f0c7f43-9b8e-4c33-a5a9-0e7f3b2d1c6a"
    before = len(responder.searches)
    for ids in ([theirs], [deleted], [first, unknown]):
        refused = await client.post(
            "/v1/search", json={"query": "refunds", "document_ids": ids}, headers=admin
        )
        assert refused.status_code == 404, refused.text
        assert ids[-1] in refused.json()["detail"]
        assert first not in refused.json()["detail"], "only the ids that name nothing"
    for ids in ([], [first] * 21, ["not-a-uuid"]):
        malformed = await client.post(
            "/v1/search", json={"query": "refunds", "document_ids": ids}, headers=admin
        )
        assert malformed.status_code == 422, malformed.text
    assert len(responder.searches) == before, "nothing was published"
