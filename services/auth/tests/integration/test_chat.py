"""Chat through the edge: a round trip with a stand-in for retrieval+inference on the reply
partition, SSE, the OpenAI-compatible shape, the deadline, rate limits and budgets."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from auth_support import CITED, TEXT_ONLY_MODEL, bearer
from tenantry_common.budget import BudgetStore
from tenantry_common.events import ChatRequested, ContextRetrieved
from tenantry_common.ids import derived_id, utcnow
from tenantry_common.redis import create_redis
from tenantry_common.topics import CHAT_RESPONSES

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


async def test_chat_round_trip_answers_with_the_documented_shape(
    client, tenant, responder, edge_app
) -> None:
    r = await client.post(
        "/v1/chat", json={"question": "What is the answer?"}, headers=bearer(tenant.member_token)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "request_id",
        "conversation_id",
        "answer",
        "citations",
        "cached",
        "usage",
        "finish_reason",
    }
    assert body["conversation_id"] is None
    assert body["finish_reason"] == "stop"
    assert body["answer"] == "The answer is forty-two."
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    [request] = [
        q for q in responder.for_tenant(tenant.tenant_id) if str(q.request_id) == body["request_id"]
    ]
    # The request names this replica's leased partition and carries the config snapshot.
    assert request.reply_to.topic == CHAT_RESPONSES.name
    assert request.reply_to.partition == edge_app.state.replies.partition
    assert request.options.model == "smollm2-135m"
    assert request.options.config_version == 1
    assert request.reservation.reserved_tokens >= request.options.max_tokens
    assert request.deadline_at is not None
    assert request.user_id.startswith(str(tenant.tenant_id))  # the token's subject (a client id)
    assert r.headers["RateLimit-Limit"] == "120"


async def _features(client, tenant, *, rag: bool, semantic_cache: bool) -> None:
    r = await client.put(
        "/v1/config",
        json={
            "features": {
                "rag": rag,
                "streaming": True,
                "semantic_cache": semantic_cache,
                "fine_tuning": False,
            }
        },
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200, r.text


async def test_gateway_mode_goes_straight_to_inference_and_rag_through_retrieval(
    client, tenant, responder
) -> None:
    """RAG and cache off: the edge publishes ContextRetrieved (no passages) on chat.context.v1,
    with the id retrieval would have given it; either feature on: ChatRequested for retrieval."""
    asked: dict[str, type] = {}
    for rag, cache, question in [
        (False, False, "gateway"),
        (True, False, "rag only"),
        (False, True, "cache only"),
    ]:
        await _features(client, tenant, rag=rag, semantic_cache=cache)
        r = await client.post(
            "/v1/chat", json={"question": question}, headers=bearer(tenant.member_token)
        )
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == "The answer is forty-two."
        [request] = [q for q in responder.for_tenant(tenant.tenant_id) if q.question == question]
        asked[question] = type(request)
        assert (request.options.rag, request.options.semantic_cache) == (rag, cache)
        if isinstance(request, ContextRetrieved):
            assert request.event_id == derived_id(request.request_id, "context")
            assert (request.passages, request.corpus_version) == ([], 0)
            assert request.reservation.reserved_tokens >= request.options.max_tokens
    assert asked == {
        "gateway": ContextRetrieved,
        "rag only": ChatRequested,
        "cache only": ChatRequested,
    }


async def test_a_question_limited_to_some_documents_carries_them_and_skips_the_cache(
    client, tenant, responder
) -> None:
    """``document_ids`` on either route: checked to be the tenant's own, carried in the
    request's options, and the semantic cache off for it (on for the same question without)."""
    admin = bearer(tenant.admin_token)
    r = await client.post(
        "/v1/documents", json={"title": "Refunds", "text": "30 days."}, headers=admin
    )
    assert r.status_code == 202, r.text
    document = r.json()["document_id"]
    sent = [
        ("/v1/chat", {"question": "limited [plain]", "document_ids": [document]}),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "limited [openai]"}],
                "document_ids": [document],
            },
        ),
        ("/v1/chat", {"question": "unlimited"}),
    ]
    for path, body in sent:
        r = await client.post(path, json=body, headers=bearer(tenant.member_token))
        assert r.status_code == 200, r.text
    asked = {q.question: q for q in responder.for_tenant(tenant.tenant_id)}
    for question in ("limited [plain]", "limited [openai]"):
        options = asked[question].options
        assert [str(d) for d in options.document_ids] == [document]
        assert (options.rag, options.semantic_cache) == (True, False)
    assert asked["unlimited"].options.document_ids == []
    assert asked["unlimited"].options.semantic_cache is True

    unknown = "5f0c7f43-9b8e-4c33-a5a9-0e7f3b2d1c6a"
    r = await client.post(
        "/v1/chat",
        json={"question": "unknown", "document_ids": [unknown]},
        headers=bearer(tenant.member_token),
    )
    assert (r.status_code, unknown in r.json()["detail"]) == (404, True), r.text
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "unknown"}], "document_ids": [unknown]},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 404, r.text
    assert unknown in r.json()["error"]["message"]  # OpenAI's shape on its route
    await _features(client, tenant, rag=False, semantic_cache=True)
    r = await client.post(
        "/v1/chat",
        json={"question": "no rag", "document_ids": [document]},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 422, r.text
    assert "RAG is off" in r.json()["detail"]
    assert not [q for q in responder.for_tenant(tenant.tenant_id) if q.question == "no rag"]


async def test_chat_reservation_is_held_in_the_tenant_budget(
    client, tenant, responder, edge_settings
) -> None:
    r = await client.post(
        "/v1/chat", json={"question": "hold it"}, headers=bearer(tenant.member_token)
    )
    assert r.status_code == 200
    [request] = responder.for_tenant(tenant.tenant_id)
    redis = create_redis(edge_settings.redis_url)
    try:
        snap = await BudgetStore(redis).snapshot(
            tenant_id=tenant.tenant_id, day=request.reservation.period_day
        )
    finally:
        await redis.aclose()
    # Nobody settles here (metering does): the worst case stays reserved.
    assert snap.tokens_reserved == request.reservation.reserved_tokens


async def test_chat_streams_server_sent_events_in_seq_order(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/chat",
        json={"question": "stream it [shuffle]", "stream": True},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [block for block in r.text.split("\n\n") if block]
    kinds = [b.split("\n")[0].removeprefix("event: ") for b in events]
    assert kinds == ["delta", "delta", "delta", "completed"]
    deltas = [b.split("data: ", 1)[1] for b in events[:3]]
    assert '"seq":0' in deltas[0]
    assert '"seq":1' in deltas[1]
    assert '"seq":2' in deltas[2]
    assert "forty-two" in events[3]


async def test_accept_event_stream_header_selects_sse(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/chat",
        json={"question": "hi"},
        headers=bearer(tenant.member_token) | {"Accept": "text/event-stream"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: completed" in r.text


async def test_unanswered_chat_ends_with_504_and_a_clear_body(
    client, tenant, responder, edge_settings
) -> None:
    r = await client.post(
        "/v1/chat", json={"question": "[silent]"}, headers=bearer(tenant.member_token)
    )
    assert r.status_code == 504
    body = r.json()
    assert body["error"] == "deadline_exceeded"
    assert str(edge_settings.chat_deadline_s).rstrip("0").rstrip(".") in body["detail"]
    uuid.UUID(body["request_id"])


async def test_failed_chat_is_reported_with_its_reason(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/chat", json={"question": "[fail]"}, headers=bearer(tenant.member_token)
    )
    assert r.status_code == 503
    assert r.json()["error"] == "model_unavailable"


async def test_a_request_the_provider_rejected_is_a_400_on_both_routes(
    client, tenant, responder
) -> None:
    """ChatFailed request_rejected: the request itself was invalid for the model, so the client
    gets a 400 (which OpenAI's SDKs do not retry), not a 503 (which they retry twice)."""
    said = "the model rejected the request as invalid (HTTP 400: context_length_exceeded)"
    auth = bearer(tenant.member_token)
    r = await client.post("/v1/chat", json={"question": "[rejected]"}, headers=auth)
    assert r.status_code == 400, r.text
    assert (r.json()["error"], r.json()["detail"]) == ("request_rejected", said)
    for stream in (False, True):
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "[rejected]"}],
                "stream": stream,
            },
            headers=auth,
        )
        assert r.status_code == 400, (stream, r.text)
        error = r.json()["error"]
        assert (error["type"], error["code"], error["message"]) == (
            "invalid_request_error",
            "request_rejected",
            said,
        )


async def test_an_answer_the_edge_cannot_read_fails_the_request_at_once(
    client, tenant, responder
) -> None:
    """A final answer of a contract version this edge does not know (a rolling upgrade in the
    wrong order) ends the request it names with a 502 when it arrives. Before, it was ignored
    and the client waited for its deadline (504)."""
    auth = bearer(tenant.member_token)
    r = await client.post("/v1/chat", json={"question": "[unreadable]"}, headers=auth)
    assert r.status_code == 502, r.text
    assert r.json()["error"] == "internal"
    assert "could not be read by the edge" in r.json()["detail"]
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "[unreadable]"}], "stream": True},
        headers=auth,
    )
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "internal"


@pytest.mark.parametrize("system", ["system", "developer"])  # OpenAI's newer name for it
async def test_openai_compatible_completion_shape(client, tenant, responder, system) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "smollm2-135m",
            "messages": [
                {"role": system, "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
            "max_tokens": 50,
        },
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The answer is forty-two.",
    }
    assert body["usage"]["total_tokens"] == 16
    [request] = responder.for_tenant(tenant.tenant_id)
    assert request.options.max_tokens == 50
    assert [(m.role, m.content) for m in request.history] == [("system", "be brief")]


async def test_openai_answers_carry_their_citations_whole_and_streamed(
    client, tenant, responder
) -> None:
    """OpenAI's shape has no place for sources; ``citations`` is added beside ``usage`` (and on
    the stream's last chunk), where OpenAI's SDKs keep it, so a frontend on them can show them."""
    cited = [CITED.model_dump(mode="json")]
    member = bearer(tenant.member_token)
    asked = {"messages": [{"role": "user", "content": "refunds? [cite]"}]}
    r = await client.post("/v1/chat/completions", json=asked, headers=member)
    assert r.status_code == 200, r.text
    assert r.json()["citations"] == cited
    r = await client.post("/v1/chat", json={"question": "refunds? [cite]"}, headers=member)
    assert r.json()["citations"] == cited  # the same shape as /v1/chat's

    r = await client.post("/v1/chat/completions", json=asked | {"stream": True}, headers=member)
    chunks = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: {")]
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["citations"] == cited
    assert all("citations" not in c for c in chunks[:-1])

    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "no sources"}]},
        headers=member,
    )
    assert r.json()["citations"] == []


async def test_openai_compatible_streaming_ends_with_done(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200
    lines = [line for line in r.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason":"stop"' in lines[-2]
    assert "".join(line for line in lines if '"content"' in line).count("forty-two") == 1


async def test_an_answer_cut_at_its_token_limit_is_finish_reason_length_everywhere(
    client, tenant, responder
) -> None:
    """What OpenAI's clients read to tell a cut-off answer (and /v1/chat says the same)."""
    member = bearer(tenant.member_token)
    ask = {"messages": [{"role": "user", "content": "long story [length]"}]}
    r = await client.post("/v1/chat/completions", json=ask, headers=member)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"

    r = await client.post("/v1/chat/completions", json=ask | {"stream": True}, headers=member)
    finishes = [
        json.loads(line[6:])["choices"][0]["finish_reason"]
        for line in r.text.split("\n")
        if line.startswith("data: {")
    ]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}

    r = await client.post("/v1/chat", json={"question": "long story [length]"}, headers=member)
    assert r.json()["finish_reason"] == "length"


async def test_openai_model_outside_the_tenants_allowed_list_is_404_model_not_found(
    client, tenant
) -> None:
    """As OpenAI answers a model the key may not use; /v1/chat keeps its 422."""
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert "not allowed" in error["message"]


async def test_openai_routes_answer_every_refusal_in_openais_error_shape(client, tenant) -> None:
    """Bad bodies are 400 naming the field, bad tokens 401, wrong methods 405: each as
    ``{"error": {message, type, param, code}}``, which OpenAI's SDKs read; /v1/chat keeps
    FastAPI's ``detail``."""
    member = bearer(tenant.member_token)
    cases = [
        ({"messages": []}, member, 400, "invalid_request_error", "messages"),
        (
            {"messages": [{"role": "wizard", "content": "hi"}]},
            member,
            400,
            "invalid_request_error",
            "messages.0.role",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            member,
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {"messages": [{"role": "user", "content": " "}]},
            member,
            400,
            "invalid_request_error",
            "messages",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, {}, 401, "authentication_error", None),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            bearer("not-a-token"),
            401,
            "authentication_error",
            None,
        ),
    ]
    for body, headers, status, kind, param in cases:
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()) == {"error"}, r.text
        error = r.json()["error"]
        assert (error["type"], error["param"]) == (kind, param), r.text
        assert error["message"], r.text
    assert "WWW-Authenticate" in r.headers

    r = await client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers=member | {"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "json_invalid"
    r = await client.get("/v1/chat/completions", headers=member)
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"
    big = {"messages": [{"role": "user", "content": "x" * 30_000}] * 100}
    r = await client.post("/v1/chat/completions", json=big, headers=member)
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]["message"]

    r = await client.post("/v1/chat", json={"question": ""}, headers=member)
    assert r.status_code == 422
    assert "detail" in r.json()


async def test_openai_messages_the_platform_cannot_take_whole_are_400s_not_cut_or_dropped(
    client, tenant, responder
) -> None:
    """The question (the last user message) may take 16,000 characters and any message 32,000,
    its parts joined, and nothing may follow the question: otherwise a 400 naming the message.
    Before, a longer question was cut without a word, a message of long parts failed as a 500
    and messages after the question were dropped."""
    member = bearer(tenant.member_token)
    long_question = {"messages": [{"role": "user", "content": "x" * 16_001}]}
    r = await client.post("/v1/chat/completions", json=long_question, headers=member)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages.0.content", "string_above_max_length")
    assert "16,001 characters; at most 16,000" in error["message"]

    parts = [{"type": "text", "text": "y" * 20_000}] * 2
    body = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "and now?"},
        ]
    }
    r = await client.post("/v1/chat/completions", json=body, headers=member)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "messages.0", r.text
    assert "40,002 characters; at most 32,000" in error["message"]

    # A message after the question (an assistant prefill) would be dropped: refused.
    prefill = {
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"},
        ]
    }
    r = await client.post("/v1/chat/completions", json=prefill, headers=member)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages.1", "unsupported_value")
    assert "must end with a user message" in error["message"]

    # At the limits, both are taken whole.
    body["messages"][0]["content"] = [{"type": "text", "text": "y" * 15_999}] * 2  # 32,000
    body["messages"][-1]["content"] = "z" * 16_000
    r = await client.post("/v1/chat/completions", json=body, headers=member)
    assert r.status_code == 200, r.text
    request = responder.requests[-1]
    assert request.question == "z" * 16_000
    assert len(request.history[0].content) == 32_000


async def test_openai_stream_with_include_usage_ends_with_a_usage_chunk(
    client, tenant, responder
) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200, r.text
    lines = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    usage_chunk = json.loads(lines[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    assert json.loads(lines[-3])["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in json.loads(line) for line in lines[:-2])


async def test_openai_content_parts_and_max_completion_tokens_are_honoured(
    client, tenant, responder
) -> None:
    """Newer OpenAI clients send content as text parts and the limit as max_completion_tokens."""
    r = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "hi"}],
                },
            ],
            "max_completion_tokens": 40,
        },
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200, r.text
    [request] = responder.for_tenant(tenant.tenant_id)
    assert request.question == "first\n\nhi"
    assert [(m.role, m.content) for m in request.history] == [("system", "be brief")]
    assert request.options.max_tokens == 40

    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "image_url", "x": 1}]}]},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"].startswith("messages.0.content")


async def _asked(client, tenant, responder, extra: dict[str, object]) -> Any:
    """Ask through the OpenAI route with ``extra`` fields; the request the edge published."""
    question = f"asked {uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}]} | extra,
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 200, r.text
    [request] = [q for q in responder.for_tenant(tenant.tenant_id) if q.question == question]
    return request


async def test_openai_stop_and_temperature_reach_the_request_and_stop_skips_the_cache(
    client, tenant, responder
) -> None:
    """The request's own stop sequences and temperature travel with it. With stop sequences
    the semantic cache is skipped (a cached answer was not cut at them), and the request is
    written as version 2; without them it stays version 1 for consumers not yet upgraded."""
    member = bearer(tenant.member_token)
    asked = [
        ({"stop": "END", "temperature": 0.7}, ["END"], 0.7, False, 2),
        ({"stop": ["\n\n", "Q:"]}, ["\n\n", "Q:"], 0.2, False, 2),
        ({"stop": None}, [], 0.2, True, 1),
        ({}, [], 0.2, True, 1),
    ]
    for extra, stop, temperature, cached, version in asked:
        request = await _asked(client, tenant, responder, extra)
        options = request.options
        assert (options.stop, options.temperature) == (stop, temperature), extra
        assert (options.semantic_cache, request.schema_version) == (cached, version), extra

    for stop in (["a", "b", "c", "d", "e"], "", ["x" * 201]):
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stop": stop},
            headers=member,
        )
        assert r.status_code == 400, (stop, r.text)
        assert r.json()["error"]["param"].startswith("stop"), r.text


async def test_openai_sampling_parameters_reach_the_request_and_skip_the_cache(
    client, tenant, responder
) -> None:
    """top_p, seed and the penalties travel as the request set them (version 3, and only
    then); a request that shapes its own generation neither gets nor fills a cached answer."""
    member = bearer(tenant.member_token)
    asked = [
        (
            {"top_p": 0.9, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5},
            {"top_p": 0.9, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5},
        ),
        ({"seed": 0, "stop": "END"}, {"seed": 0}),
        ({"top_p": None}, None),
    ]
    for extra, given in asked:
        request = await _asked(client, tenant, responder, extra)
        sampling = request.options.sampling
        assert (sampling.given() if sampling else None) == given, extra
        assert request.schema_version == (3 if given else 1), extra
        assert request.options.semantic_cache is (given is None), extra

    for name, value in [
        ("top_p", 1.5),
        ("seed", "x"),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
    ]:
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], name: value},
            headers=member,
        )
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["param"] == name, r.text


async def test_openai_response_formats_reach_the_request_and_skip_the_cache(
    client, tenant, responder
) -> None:
    """JSON mode and a JSON Schema travel with the request as the client wrote them (version
    4, and only then); such a request neither gets nor fills a cached (free-text) answer."""
    schema = {
        "type": "object",
        "properties": {"refund_days": {"type": "integer"}},
        "required": ["refund_days"],
    }
    structured = {
        "type": "json_schema",
        "json_schema": {"name": "refund", "schema": schema, "strict": True},
    }
    for form, written in [
        ({"type": "json_object"}, {"type": "json_object"}),
        (structured, structured),
        ({"type": "text"}, None),
    ]:
        request = await _asked(client, tenant, responder, {"response_format": form})
        asked = request.options.response_format
        assert (asked.model_dump() if asked else None) == written, form
        assert request.schema_version == (4 if written else 1), form
        assert request.options.semantic_cache is (written is None), form


async def test_a_response_format_that_is_malformed_or_not_taken_is_refused_naming_it(
    client, tenant, responder, edge_settings
) -> None:
    """A malformed format, or a schema that is not a JSON Schema, is OpenAI's 400 naming the
    field; a format the chosen model's server does not take is 400 ``unsupported_value``,
    before anything is published or reserved."""
    member = bearer(tenant.member_token)
    malformed = [
        ({"type": "xml"}, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema"),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "a",
                    "schema": {"properties": {"x": {"$ref": "https://example.test/s.json"}}},
                },
            },
            "response_format",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "thing"}}},
            "response_format",
        ),
    ]
    for form, param in malformed:
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "response_format": form},
            headers=member,
        )
        assert r.status_code == 400, (form, r.text)
        assert r.json()["error"]["param"].startswith(param), (form, r.text)
    assert "not a JSON Schema" in r.json()["error"]["message"], r.text  # the last one's reason

    r = await client.put(
        "/v1/config",
        json={"allowed_models": ["smollm2-135m", TEXT_ONLY_MODEL], "model": "smollm2-135m"},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": TEXT_ONLY_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        },
        headers=member,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("response_format", "unsupported_value"), r.text
    assert TEXT_ONLY_MODEL in error["message"], r.text
    assert responder.for_tenant(tenant.tenant_id) == []  # none of them was published
    redis = create_redis(edge_settings.redis_url)
    try:
        snap = await BudgetStore(redis).snapshot(tenant_id=tenant.tenant_id, day=utcnow().date())
    finally:
        await redis.aclose()
    assert snap.tokens_reserved == 0


async def test_the_end_user_a_request_names_travels_with_it_on_both_routes(
    client, tenant, responder
) -> None:
    """OpenAI's ``user`` (and /v1/chat's) goes with the request as ``end_user`` (version 3);
    without one, or with an empty one, the request names none and stays version 1."""
    member = bearer(tenant.member_token)
    for route, extra, end_user in [
        ("/v1/chat/completions", {"user": "user-7f3a"}, "user-7f3a"),
        ("/v1/chat/completions", {"user": ""}, None),
        ("/v1/chat", {"user": "user-9b2c"}, "user-9b2c"),
        ("/v1/chat", {}, None),
    ]:
        question = f"who {uuid.uuid4().hex[:8]}"
        body = (
            {"messages": [{"role": "user", "content": question}]}
            if route == "/v1/chat/completions"
            else {"question": question}
        )
        r = await client.post(route, json=body | extra, headers=member)
        assert r.status_code == 200, r.text
        [request] = [q for q in responder.for_tenant(tenant.tenant_id) if q.question == question]
        assert request.end_user == end_user, (route, extra)
        assert request.schema_version == (3 if end_user else 1), (route, extra)

    too_long = "u" * 257
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "user": too_long},
        headers=member,
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "user"), r.text
    r = await client.post("/v1/chat", json={"question": "hi", "user": too_long}, headers=member)
    assert r.status_code == 422, r.text


async def test_a_question_with_earlier_messages_skips_the_semantic_cache(
    client, tenant, responder
) -> None:
    """The cache is keyed by the question alone: "and how long does that take?" after a talk
    about refunds must not get the cached answer from a talk about shipping."""
    member = bearer(tenant.member_token)
    asked = [
        ([], True),
        ([{"role": "system", "content": "Answer in French."}], False),
        (
            [
                {"role": "user", "content": "What is the refund policy?"},
                {"role": "assistant", "content": "Refunds within 30 days."},
            ],
            False,
        ),
    ]
    for earlier, cached in asked:
        question = f"and how long does that take? {uuid.uuid4().hex[:8]}"
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [*earlier, {"role": "user", "content": question}]},
            headers=member,
        )
        assert r.status_code == 200, r.text
        [request] = [q for q in responder.for_tenant(tenant.tenant_id) if q.question == question]
        assert len(request.history) == len(earlier)
        assert request.options.semantic_cache is cached, earlier


async def test_openai_parameters_the_platform_cannot_honour_are_refused_not_ignored(
    client, tenant, responder
) -> None:
    """A client that asks for the deprecated functions, several choices, log probabilities or
    audio gets OpenAI's 400 naming the parameter, not a plain text answer with no sign of why;
    their harmless values are accepted."""
    member = bearer(tenant.member_token)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    refused = [
        ({"functions": [tool["function"]]}, "functions", "unsupported_parameter"),
        ({"function_call": {"name": "lookup"}}, "function_call", "unsupported_value"),
        ({"n": 2}, "n", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_value"),
    ]
    for extra, param, code in refused:
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]} | extra,
            headers=member,
        )
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            code,
        ), r.text
    assert responder.for_tenant(tenant.tenant_id) == []  # none of them was published

    harmless = {
        "n": 1,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "modalities": ["text"],
        "top_p": 0.9,
        "user": "end-user-7",
    }
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]} | harmless,
        headers=member,
    )
    assert r.status_code == 200, r.text


async def test_openai_models_lists_the_tenants_allowed_models_default_first(client, tenant) -> None:
    admin = bearer(tenant.admin_token)
    r = await client.put(
        "/v1/config",
        json={"allowed_models": ["gpt-4o-mini", "smollm2-135m"], "model": "smollm2-135m"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    member = bearer(tenant.member_token)
    r = await client.get("/v1/models", headers=member)
    assert r.status_code == 200, r.text
    card = {"object": "model", "created": 0, "owned_by": "tenantry", "tool_calls": True}
    local = card | {
        "id": "smollm2-135m",
        "context_window": 2048,
        "pricing": {"input_micros_per_mtok": 50_000, "output_micros_per_mtok": 100_000},
        "response_formats": ["text", "json_object", "json_schema"],
    }
    hosted = card | {
        "id": "gpt-4o-mini",
        "context_window": 128_000,
        "pricing": {"input_micros_per_mtok": 150_000, "output_micros_per_mtok": 600_000},
        "response_formats": ["text", "json_object", "json_schema"],
    }
    assert r.json() == {"object": "list", "data": [local, hosted]}
    r = await client.get("/v1/models/gpt-4o-mini", headers=member)
    assert (r.status_code, r.json()) == (200, hosted)
    r = await client.get("/v1/models/openai/gpt-5", headers=member)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = await client.get("/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


async def test_operators_read_the_whole_catalogue_and_tenants_do_not(
    client, tenant, operator_token
) -> None:
    r = await client.get("/v1/catalogue", headers=bearer(operator_token))
    assert r.status_code == 200, r.text
    entries = {entry["id"]: entry for entry in r.json()}
    assert set(entries) == {"smollm2-135m", "gpt-4o-mini", TEXT_ONLY_MODEL}
    assert entries["gpt-4o-mini"]["api_key_env"] == "OPENAI_API_KEY"
    assert entries[TEXT_ONLY_MODEL]["response_formats"] == ["text"]
    assert entries["smollm2-135m"]["fallbacks"] == []
    assert entries["smollm2-135m"]["pricing"]["output_micros_per_mtok"] == 100_000
    for token in (tenant.admin_token, tenant.member_token):
        assert (await client.get("/v1/catalogue", headers=bearer(token))).status_code == 403


async def test_rate_limit_refuses_with_429_retry_after_and_ratelimit_headers(
    client, tenant, responder
) -> None:
    r = await client.put(
        "/v1/config", json={"rate_limit_per_minute": 2}, headers=bearer(tenant.admin_token)
    )
    assert r.status_code == 200, r.text
    codes = []
    for _ in range(3):
        r = await client.post(
            "/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token)
        )
        codes.append(r.status_code)
    assert codes == [200, 200, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["RateLimit-Limit"] == "2"
    assert r.headers["RateLimit-Remaining"] == "0"
    assert "rate limit" in r.json()["detail"]


def _asking_as(client: Any, headers: dict[str, str]) -> Callable[..., Awaitable[Any]]:
    """``await ask(user, route)``: the question "q" on a chat route, naming ``user`` (if any)
    as the end user."""

    async def ask(user: str | None, route: str = "/v1/chat/completions") -> Any:
        body: dict[str, object] = (
            {"messages": [{"role": "user", "content": "q"}]}
            if route == "/v1/chat/completions"
            else {"question": "q"}
        )
        if user is not None:
            body["user"] = user
        return await client.post(route, json=body, headers=headers)

    return ask


async def test_a_tenant_limits_each_end_user_within_its_own_rate(client, tenant, responder) -> None:
    """With end_user_rate_limit_per_minute set, each end user a request names (OpenAI's
    ``user``, /v1/chat's ``user``) gets that rate, on both routes together; other end users,
    and requests naming none, go on; 0 turns the limit off; it may not exceed the tenant's."""
    admin = bearer(tenant.admin_token)
    member = bearer(tenant.member_token)
    r = await client.put("/v1/config", json={"end_user_rate_limit_per_minute": 500}, headers=admin)
    assert r.status_code == 422, r.text  # above the tenant's own rate
    assert "end_user_rate_limit_per_minute" in r.json()["detail"]
    r = await client.put("/v1/config", json={"end_user_rate_limit_per_minute": 2}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["end_user_rate_limit_per_minute"] == 2

    ask = _asking_as(client, member)

    codes = [
        (await ask("user-a")).status_code,
        (await ask("user-a", "/v1/chat")).status_code,
    ]
    refused = await ask("user-a")
    assert [*codes, refused.status_code] == [200, 200, 429], refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "per end user" in error["message"]
    assert refused.headers["RateLimit-Limit"] == "2"
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await ask("user-b")).status_code == 200
    assert (await ask(None)).status_code == 200

    r = await client.put("/v1/config", json={"end_user_rate_limit_per_minute": 0}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["end_user_rate_limit_per_minute"] == 0  # off, and shown as such
    shown = await client.get("/v1/config", headers=admin)
    assert shown.json()["config"]["end_user_rate_limit_per_minute"] == 0
    assert (await ask("user-a")).status_code == 200


async def test_a_tenant_budgets_each_end_users_tokens_within_its_own(
    client, tenant, responder
) -> None:
    """With end_user_daily_token_budget set, each end user a request names holds its worst case
    of their own day as well as the tenant's: past it they are refused (429, insufficient_quota
    on the OpenAI route) while the tenant's other users, and requests naming none, go on. It may
    not exceed the tenant's daily budget; 0 turns it off."""
    admin = bearer(tenant.admin_token)
    member = bearer(tenant.member_token)
    shown = await client.get("/v1/config", headers=admin)
    daily = shown.json()["config"]["daily_token_budget"]
    assert shown.json()["config"]["end_user_daily_token_budget"] == 0  # off, and shown as such
    r = await client.put(
        "/v1/config", json={"end_user_daily_token_budget": daily + 1}, headers=admin
    )
    assert r.status_code == 422, r.text
    assert "end_user_daily_token_budget" in r.json()["detail"]

    ask = _asking_as(client, member)

    # What one such request holds (nobody settles here: holds stay until metering would).
    assert (await ask("probe")).status_code == 200
    worst = responder.for_tenant(tenant.tenant_id)[-1].reservation.reserved_tokens
    r = await client.put(
        "/v1/config", json={"end_user_daily_token_budget": 2 * worst}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["end_user_daily_token_budget"] == 2 * worst
    codes = [(await ask("user-a")).status_code, (await ask("user-a", "/v1/chat")).status_code]
    refused = await ask("user-a")
    assert [*codes, refused.status_code] == [200, 200, 429], refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert f"daily token budget of {2 * worst} tokens per end user" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    refused = await ask("user-a", "/v1/chat")
    assert refused.status_code == 429
    assert "per end user" in refused.json()["detail"]
    assert (await ask("user-b")).status_code == 200
    assert (await ask(None)).status_code == 200

    r = await client.put("/v1/config", json={"end_user_daily_token_budget": 0}, headers=admin)
    assert r.status_code == 200, r.text
    assert (await ask("user-a")).status_code == 200


async def test_openai_rate_limit_and_budget_refusals_are_429s_with_their_codes(
    client, onboard, responder
) -> None:
    """On the OpenAI route: the rate limit is rate_limit_exceeded, the budget
    insufficient_quota, each with Retry-After."""
    ask = {"messages": [{"role": "user", "content": "q"}]}
    for limits, code in (
        ({"rate_limit_per_minute": 1}, "rate_limit_exceeded"),
        ({"daily_token_budget": 3000, "max_tokens_per_request": 1000}, "insufficient_quota"),
    ):
        tenant = await onboard(tier="pro")
        r = await client.put("/v1/config", json=limits, headers=bearer(tenant.admin_token))
        assert r.status_code == 200, r.text
        member = bearer(tenant.member_token)
        first = await client.post("/v1/chat/completions", json=ask, headers=member)
        assert first.status_code == 200, first.text
        second = await client.post("/v1/chat/completions", json=ask, headers=member)
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == code
        assert int(second.headers["Retry-After"]) >= 1


async def test_budget_refuses_with_429_when_the_reservation_would_overshoot(
    client, tenant, responder
) -> None:
    r = await client.put(
        "/v1/config",
        json={"daily_token_budget": 3000, "max_tokens_per_request": 1000},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200, r.text
    first = await client.post(
        "/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token)
    )
    assert first.status_code == 200
    second = await client.post(
        "/v1/chat", json={"question": "q"}, headers=bearer(tenant.member_token)
    )
    assert second.status_code == 429
    assert "daily token budget" in second.json()["detail"]
    assert int(second.headers["Retry-After"]) >= 1
    assert len(responder.for_tenant(tenant.tenant_id)) == 1  # the refused one was never published


async def test_a_features_update_keeps_the_flags_it_leaves_out(client, tenant) -> None:
    admin = bearer(tenant.admin_token)
    for flags in ({"rag": False}, {"streaming": False}):
        r = await client.put("/v1/config", json={"features": flags}, headers=admin)
        assert r.status_code == 200, r.text
    shown = (await client.get("/v1/config", headers=admin)).json()["config"]["features"]
    assert shown == {"rag": False, "streaming": False, "semantic_cache": True, "fine_tuning": False}


async def test_streaming_disabled_by_feature_flag_is_403(client, tenant) -> None:
    r = await client.put(
        "/v1/config",
        json={
            "features": {
                "rag": True,
                "streaming": False,
                "semantic_cache": True,
                "fine_tuning": False,
            }
        },
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200
    r = await client.post(
        "/v1/chat", json={"question": "q", "stream": True}, headers=bearer(tenant.member_token)
    )
    assert r.status_code == 403
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "q"}], "stream": True},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["type"] == "permission_error", error
    assert "streaming is disabled" in error["message"]


async def test_operator_cannot_chat(client, operator_token) -> None:
    r = await client.post("/v1/chat", json={"question": "q"}, headers=bearer(operator_token))
    assert r.status_code == 403


async def test_unanswered_streaming_chat_is_504_not_a_hang(client, tenant, responder) -> None:
    r = await client.post(
        "/v1/chat",
        json={"question": "[silent]", "stream": True},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 504
    assert r.json()["error"] == "deadline_exceeded"


async def test_reservation_is_released_when_publishing_fails(
    edge_app, tenant, edge_settings
) -> None:
    import dataclasses

    from auth_support import member_principal
    from tenantry_auth import service

    async def broken_publish(topic, event) -> None:
        raise ConnectionError("broker away")

    edge = dataclasses.replace(edge_app.state.edge, publish=broken_publish)
    principal = member_principal(tenant.tenant_id, "s")
    with pytest.raises(service.Unavailable):
        await service.admit_chat(
            edge=edge,
            principal=principal,
            request_id=uuid.uuid4(),
            question="q",
            history=[],
            conversation_id=None,
            stream=False,
            reply_partition=0,
        )
    redis = create_redis(edge_settings.redis_url)
    try:
        snap = await BudgetStore(redis).snapshot(
            tenant_id=tenant.tenant_id, day=principal.issued_at.date()
        )
    finally:
        await redis.aclose()
    assert snap.tokens_reserved == 0


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def test_tools_go_to_the_model_and_its_calls_come_back_whole_and_streamed(
    client, tenant, responder
) -> None:
    """OpenAI's function calling: the tools and tool_choice ride on the request (never through
    the semantic cache); the model's calls come back as OpenAI's clients read them."""
    member = bearer(tenant.member_token)
    asked = {
        "messages": [{"role": "user", "content": "Weather in Paris? [call]"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }
    r = await client.post("/v1/chat/completions", json=asked, headers=member)
    assert r.status_code == 200, r.text
    [choice] = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"x": 1}'},
            }
        ],
    }
    [request] = responder.for_tenant(tenant.tenant_id)
    assert request.schema_version == 5
    tools = request.options.tools
    assert tools is not None
    assert (tools.function, tools.parallel_tool_calls) == ("get_weather", False)
    assert tools.tools[0].function.parameters == WEATHER["function"]["parameters"]
    assert request.options.semantic_cache is False

    r = await client.post("/v1/chat/completions", json=asked | {"stream": True}, headers=member)
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert [d for d in deltas if "content" in d] == []  # no text: a call only
    [calls] = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"x": 1}'},
        }
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_the_tools_results_follow_the_question_to_the_model(
    client, tenant, responder
) -> None:
    member = bearer(tenant.member_token)
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 C"},
    ]
    r = await client.post(
        "/v1/chat/completions", json={"messages": messages, "tools": [WEATHER]}, headers=member
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "The answer is forty-two."
    [request] = responder.for_tenant(tenant.tenant_id)
    assert request.question == "Weather in Paris?"
    assert [(m.role, m.tool_call_id) for m in request.tool_turns] == [
        ("assistant", None),
        ("tool", "c1"),
    ]
    assert request.tool_turns[0].tool_calls[0].function.name == "get_weather"
    assert request.tool_turns[1].content == "Sunny, 21 C"


@pytest.mark.parametrize(
    ("change", "param", "said"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, None, "not in tools"),
        ({"tool_choice": "required", "tools": None}, None, "needs tools"),
        ({"tools": [WEATHER, WEATHER]}, None, "same name"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
            "pattern",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": f"f{i}", "description": "x" * 3_000}}
                    for i in range(30)
                ]
            },
            None,
            "at most 65536",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools.0.function.parameters",
            "not a JSON Schema",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "tool_call_id": "c9", "content": "r"},
                ]
            },
            "messages.1",
            "not a call",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                ]
            },
            "messages.1",
            "no tool message answering",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
            "messages.1",
            "tool_call_id",
        ),
    ],
)
async def test_malformed_tool_requests_are_refused_with_the_reason(
    client, tenant, responder, change, param, said
) -> None:
    body = {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]} | change
    r = await client.post(
        "/v1/chat/completions",
        json={k: v for k, v in body.items() if v is not None},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert said in error["message"], error
    assert responder.for_tenant(tenant.tenant_id) == []


async def test_tools_for_a_model_that_cannot_call_them_are_refused(
    client, tenant, responder, edge_settings, monkeypatch
) -> None:
    spec = edge_settings.models["smollm2-135m"].model_copy(update={"tool_calls": False})
    monkeypatch.setitem(edge_settings.models, "smollm2-135m", spec)
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]},
        headers=bearer(tenant.member_token),
    )
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("tools", "unsupported_value")
    assert "cannot call tools" in r.json()["error"]["message"]
