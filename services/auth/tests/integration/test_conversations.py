"""Conversations of ``POST /v1/chat``: earlier turns go with the next question, and a
conversation is its owner's alone (tenant and client), kept in the real Redis."""

from __future__ import annotations

import json
import uuid

import pytest
from auth_support import bearer
from tenantry_auth.conversations import ConversationStore, _newest, tenant_pattern
from tenantry_common.events import ChatMessage
from tenantry_common.redis import create_redis

pytestmark = pytest.mark.integration

ANSWER = "The answer is forty-two."


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


@pytest.fixture
async def redis(edge_settings):
    client = create_redis(edge_settings.redis_url)
    yield client
    await client.aclose()


def _turns(request) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.history]


async def _ask(client, responder, tenant_id, token, question, conversation_id, *, stream=False):
    body = {"question": question, "conversation_id": str(conversation_id), "stream": stream}
    r = await client.post("/v1/chat", json=body, headers=bearer(token))
    assert r.status_code == 200, r.text
    [request] = [q for q in responder.for_tenant(tenant_id) if q.question == question]
    return r, request


async def test_a_conversation_carries_its_earlier_turns_to_the_next_question(
    client, tenant, responder
) -> None:
    conversation = uuid.uuid4()
    member = tenant.member_token
    r, first = await _ask(client, responder, tenant.tenant_id, member, "refunds?", conversation)
    assert r.json()["conversation_id"] == str(conversation)
    assert _turns(first) == []
    assert first.conversation_id == conversation
    assert first.options.semantic_cache  # asked on its own: the cache may answer it

    r, second = await _ask(client, responder, tenant.tenant_id, member, "how long?", conversation)
    assert _turns(second) == [("user", "refunds?"), ("assistant", ANSWER)]
    assert not second.options.semantic_cache  # a follow-up: not the cache's to answer

    r, third = await _ask(
        client, responder, tenant.tenant_id, member, "and then?", conversation, stream=True
    )
    completed = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: ")][
        -1
    ]
    assert completed["conversation_id"] == str(conversation)
    assert _turns(third) == [*_turns(second), ("user", "how long?"), ("assistant", ANSWER)]

    r = await client.get(f"/v1/conversations/{conversation}", headers=bearer(member))
    assert r.status_code == 200, r.text
    assert [(m["role"], m["content"]) for m in r.json()["messages"]] == [
        *_turns(third),
        ("user", "and then?"),
        ("assistant", ANSWER),
    ]

    # Without a conversation nothing is kept or sent, and the answer says so.
    r = await client.post("/v1/chat", json={"question": "alone"}, headers=bearer(member))
    assert r.json()["conversation_id"] is None


async def test_a_failed_answer_is_not_kept_in_the_conversation(client, tenant, responder) -> None:
    conversation = uuid.uuid4()
    body = {"question": "[fail] now", "conversation_id": str(conversation)}
    r = await client.post("/v1/chat", json=body, headers=bearer(tenant.member_token))
    assert r.status_code == 503
    r = await client.get(f"/v1/conversations/{conversation}", headers=bearer(tenant.member_token))
    assert r.status_code == 404


async def test_a_conversation_is_its_owners_alone(client, onboard, responder) -> None:
    """Another tenant, or another client of the same tenant, naming the same conversation id
    finds nothing: not in its requests, not by reading it, not by deleting it."""
    owner, other = await onboard(tier="pro"), await onboard(tier="pro")
    conversation = uuid.uuid4()
    await _ask(client, responder, owner.tenant_id, owner.member_token, "secret plan", conversation)

    for tenant_id, token in (
        (other.tenant_id, other.member_token),
        (owner.tenant_id, owner.admin_token),  # same tenant, another client
    ):
        question = f"what was said? {uuid.uuid4().hex[:6]}"
        _, request = await _ask(client, responder, tenant_id, token, question, conversation)
        assert _turns(request) == []
        path = f"/v1/conversations/{conversation}"
        if tenant_id == other.tenant_id:
            # Its own (new) conversation under that id is the only one it can see.
            r = await client.get(path, headers=bearer(token))
            assert [m["content"] for m in r.json()["messages"]] == [question, ANSWER]
            assert (await client.delete(path, headers=bearer(token))).status_code == 204

    r = await client.get(f"/v1/conversations/{conversation}", headers=bearer(owner.member_token))
    assert [m["content"] for m in r.json()["messages"]] == ["secret plan", ANSWER]
    r = await client.get(f"/v1/conversations/{conversation}", headers=bearer(other.member_token))
    assert r.status_code == 404


async def test_deleting_a_conversation_starts_it_afresh(client, tenant, responder) -> None:
    conversation = uuid.uuid4()
    member = tenant.member_token
    await _ask(client, responder, tenant.tenant_id, member, "first", conversation)
    path = f"/v1/conversations/{conversation}"
    assert (await client.delete(path, headers=bearer(member))).status_code == 204
    assert (await client.get(path, headers=bearer(member))).status_code == 404
    assert (await client.delete(path, headers=bearer(member))).status_code == 404
    _, request = await _ask(client, responder, tenant.tenant_id, member, "again", conversation)
    assert _turns(request) == []
    r = await client.get("/v1/conversations/not-a-uuid", headers=bearer(member))
    assert r.status_code == 422
    assert (await client.get(path)).status_code == 401


async def test_the_store_keeps_the_last_turns_and_restarts_their_expiry(redis) -> None:
    store = ConversationStore(redis, max_turns=2, ttl_s=600)
    tenant, conversation = uuid.uuid4(), uuid.uuid4()
    for n in range(3):
        await store.append(
            tenant_id=tenant,
            subject="client-1",
            conversation_id=conversation,
            messages=[
                ChatMessage(role="user", content=f"q{n}"),
                ChatMessage(role="assistant", content=f"a{n}"),
            ],
        )
    kept = await store.history(tenant_id=tenant, subject="client-1", conversation_id=conversation)
    assert [m.content for m in kept] == ["q1", "a1", "q2", "a2"]
    [key] = [k async for k in redis.scan_iter(match=tenant_pattern(tenant))]
    assert 590 <= await redis.ttl(key) <= 600


async def test_offboarding_deletes_every_conversation_of_the_tenant_only(
    client, onboard, responder, operator_token, redis
) -> None:
    leaving, staying = await onboard(tier="pro"), await onboard(tier="pro")
    for tenant in (leaving, staying):
        for _ in range(2):
            question = f"hello {uuid.uuid4().hex[:6]}"
            await _ask(
                client, responder, tenant.tenant_id, tenant.member_token, question, uuid.uuid4()
            )

    async def keys(tenant_id: uuid.UUID) -> list[str]:
        return [k async for k in redis.scan_iter(match=tenant_pattern(tenant_id))]

    assert len(await keys(leaving.tenant_id)) == 2
    r = await client.delete(f"/v1/tenants/{leaving.tenant_id}", headers=bearer(operator_token))
    assert r.status_code == 202, r.text
    assert await keys(leaving.tenant_id) == []
    assert len(await keys(staying.tenant_id)) == 2


def test_history_is_whole_turns_newest_first_within_the_size_bound() -> None:
    turns = [
        ChatMessage(role=role, content=f"{role[0]}{n}" * 10)
        for n in range(4)
        for role in ("user", "assistant")
    ]  # each message 20 characters, each turn 40
    assert _newest(turns, 1_000) == turns
    assert _newest(turns, 100) == turns[-4:]  # two turns fit, a third would not
    assert _newest(turns, 39) == []


async def test_a_long_conversation_reserves_no_more_than_the_models_window(
    client, onboard, responder
) -> None:
    """Its turns may hold far more than the window, but inference drops the oldest that do not
    fit: reserving for all of them would refuse a tenant's budget for tokens never used. (No
    metering here settles the reservations, so they add up: 3 times 2048 fit in 10,000.)"""
    tenant = await onboard(tier="pro")
    r = await client.put(
        "/v1/config", json={"daily_token_budget": 10_000}, headers=bearer(tenant.admin_token)
    )
    assert r.status_code == 200, r.text
    conversation = uuid.uuid4()
    long_question = "Tell me about refunds. " * 600  # ≈ 13,800 characters, ≈ 4,600 tokens
    for n in range(3):
        question = f"{n} {long_question}"
        _, request = await _ask(
            client, responder, tenant.tenant_id, tenant.member_token, question, conversation
        )
        assert len(request.history) == 2 * n
        assert request.reservation.reserved_tokens == 2048  # smollm2-135m's window


async def test_a_turn_that_cannot_be_kept_leaves_the_answer_alone(edge_app) -> None:
    """Redis failing after the answer came: remember_turn logs and returns, it never raises
    (the chat route returns the answer; only the conversation misses the turn)."""
    import dataclasses

    from auth_support import member_principal
    from redis.asyncio import Redis
    from tenantry_auth import service
    from tenantry_common.localstack import free_port

    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    edge = dataclasses.replace(
        edge_app.state.edge, conversations=ConversationStore(dead, max_turns=10, ttl_s=600)
    )
    principal = member_principal(uuid.uuid4())
    try:
        await service.remember_turn(
            edge=edge,
            principal=principal,
            conversation_id=uuid.uuid4(),
            question="q",
            answer="a",
        )
    finally:
        await dead.aclose()
