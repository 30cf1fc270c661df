"""The chat routes served as plain ASGI (``plain.py``) answer exactly as FastAPI's routes do.

Each request is sent twice to the same running edge: once as served (the plain route), once with
the plain routes switched off (FastAPI's route, its middleware and dependencies). Status, body
and the headers a client acts on must match, for answers and for every kind of refusal.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from auth_support import bearer
from tenantry_auth import service
from tenantry_common.topics import CHAT_CONTEXT, CHAT_REQUESTS

pytestmark = pytest.mark.integration

CHAT = "/v1/chat"
COMPLETIONS = "/v1/chat/completions"
#: Headers that must match between the two paths where present (ids and times may differ).
COMPARED_HEADERS = ("content-type", "www-authenticate", "retry-after", "ratelimit-limit")


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


@pytest.fixture
def fastapi_only(edge_app) -> Callable[[], Any]:
    """A context manager: inside it, the edge serves the chat routes through FastAPI only."""

    @contextmanager
    def switched_off() -> Any:
        saved = edge_app.plain_routes
        edge_app.plain_routes = {}
        try:
            yield
        finally:
            edge_app.plain_routes = saved

    return switched_off


async def both(
    client: httpx.AsyncClient, fastapi_only: Callable[[], Any], path: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    plain = await client.post(path, **kwargs)
    with fastapi_only():
        routed = await client.post(path, **kwargs)
    return plain, routed


def comparable(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    try:
        body: Any = response.json()
    except json.JSONDecodeError:
        body = response.text
    if isinstance(body, dict):
        body.pop("request_id", None)
        body.pop("id", None)
        body.pop("created", None)
    headers = {h: response.headers[h] for h in COMPARED_HEADERS if h in response.headers}
    return response.status_code, body, headers


REFUSALS: list[tuple[str, str, dict[str, Any]]] = [
    ("no token", CHAT, {"json": {"question": "q"}}),
    ("a malformed token", COMPLETIONS, {"json": {"messages": []}, "headers": bearer("x.y.z")}),
    ("invalid JSON", COMPLETIONS, {"content": b'{"messages": [', "member": True}),
    ("no body", CHAT, {"content": b"", "member": True}),
    ("a form body", CHAT, {"data": {"question": "q"}, "member": True}),
    ("an unknown field", CHAT, {"json": {"question": "q", "x": 1}, "member": True}),
    ("an empty question", CHAT, {"json": {"question": ""}, "member": True}),
    (
        "max_tokens out of range",
        COMPLETIONS,
        {"json": {"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, "member": True},
    ),
    (
        "no user message",
        COMPLETIONS,
        {"json": {"messages": [{"role": "system", "content": "s"}]}, "member": True},
    ),
    (
        "a model the tenant may not use",
        COMPLETIONS,
        {
            "json": {"model": "gpt-x", "messages": [{"role": "user", "content": "q"}]},
            "member": True,
        },
    ),
    ("a body over the limit", CHAT, {"json": {"question": "q" * 300_000}, "member": True}),
]


@pytest.mark.parametrize(("case", "path", "request_kwargs"), REFUSALS, ids=[c[0] for c in REFUSALS])
async def test_refusals_are_the_same_as_fastapis(
    client, tenant, fastapi_only, case: str, path: str, request_kwargs: dict[str, Any]
) -> None:
    kwargs = dict(request_kwargs)
    if kwargs.pop("member", False):
        kwargs["headers"] = bearer(tenant.member_token) | {"content-type": "application/json"}
        if "data" in kwargs:
            kwargs["headers"]["content-type"] = "application/x-www-form-urlencoded"
    plain, routed = await both(client, fastapi_only, path, **kwargs)
    assert 400 <= plain.status_code < 500, (case, plain.status_code, plain.text)
    assert comparable(plain) == comparable(routed), case


async def test_an_unexpected_error_is_a_500_the_same_way(
    edge_app, tenant, fastapi_only, monkeypatch
) -> None:
    async def broken(**_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "admit_chat", broken)
    # FastAPI's outermost middleware re-raises after answering; read the answer it sent.
    transport = httpx.ASGITransport(app=edge_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        plain, routed = await both(
            client, fastapi_only, CHAT, json={"question": "q"}, headers=bearer(tenant.member_token)
        )
    assert plain.status_code == 500
    assert comparable(plain) == comparable(routed)


async def test_an_operator_is_refused_the_same_way(client, operator_token, fastapi_only) -> None:
    plain, routed = await both(
        client, fastapi_only, CHAT, json={"question": "q"}, headers=bearer(operator_token)
    )
    assert plain.status_code == 403
    assert comparable(plain) == comparable(routed)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"question": "What is the answer?"}),
        (COMPLETIONS, {"messages": [{"role": "user", "content": "What is the answer?"}]}),
        (COMPLETIONS, {"messages": [{"role": "user", "content": "Stream it"}], "stream": True}),
    ],
    ids=["chat", "completions", "completions-streamed"],
)
async def test_answers_are_the_same_as_fastapis(
    client, tenant, responder, fastapi_only, path: str, body: dict[str, Any]
) -> None:
    headers = bearer(tenant.member_token)
    plain, routed = await both(client, fastapi_only, path, json=body, headers=headers)
    assert plain.status_code == 200, plain.text
    if body.get("stream"):
        assert plain.headers["content-type"].startswith("text/event-stream")
        assert _sse_contents(plain.text) == _sse_contents(routed.text)
        assert plain.text.rstrip().endswith("data: [DONE]")
    else:
        assert comparable(plain) == comparable(routed)
    assert plain.headers["X-Request-Id"] != routed.headers["X-Request-Id"]


def _sse_contents(text: str) -> list[Any]:
    """The SSE chunks' deltas and finish reasons (ids and times differ between requests)."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            out.append((choice["delta"], choice["finish_reason"]))
    return out


async def test_the_plain_route_skips_the_middleware_stack(client, tenant, edge_app) -> None:
    """Served plain, a chat request never reaches FastAPI's middleware stack."""
    seen: list[str] = []
    stack = edge_app.middleware_stack
    assert stack is not None, "the app has served requests, so its stack is built"

    async def watching(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await stack(scope, receive, send)

    edge_app.middleware_stack = watching
    try:
        r = await client.post(
            CHAT, json={"question": "x" * 17_000}, headers=bearer(tenant.member_token)
        )
        health = await client.get("/healthz")
    finally:
        edge_app.middleware_stack = stack
    assert r.status_code == 422  # answered, by the plain route
    assert health.status_code == 200
    assert seen == ["/healthz"]


async def test_a_streamed_body_over_the_limit_is_refused_while_it_streams(
    client, tenant, edge_settings
) -> None:
    """No Content-Length: the body is counted as it arrives and refused past the limit."""
    limit = edge_settings.max_json_body_bytes
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"question": "'
        for _ in range(limit // 10_000 + 2):
            sent += 10_000
            yield b"q" * 10_000
        yield b'"}'

    r = await client.post(
        CHAT,
        content=chunks(),
        headers=bearer(tenant.member_token) | {"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json() == {"detail": f"request body larger than {limit} bytes"}


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "fastapi"])
async def test_a_callers_trace_continues_into_the_published_request(
    client, tenant, responder, fastapi_only, kafka_bootstrap, plain: bool
) -> None:
    """A ``traceparent`` sent with the request is the trace of the event the edge publishes."""
    consumer = AIOKafkaConsumer(
        CHAT_REQUESTS.name, CHAT_CONTEXT.name, bootstrap_servers=kafka_bootstrap, group_id=None
    )
    await consumer.start()
    try:
        await consumer.seek_to_end()
        trace_id = uuid.uuid4().hex
        headers = bearer(tenant.member_token) | {"traceparent": f"00-{trace_id}-{'1' * 16}-01"}
        body = {"question": "Which trace am I on?"}
        if plain:
            r = await client.post(CHAT, json=body, headers=headers)
        else:
            with fastapi_only():
                r = await client.post(CHAT, json=body, headers=headers)
        assert r.status_code == 200, r.text
        request_id = r.json()["request_id"]
        published = None
        async with asyncio.timeout(20):
            while published is None:
                batch = await consumer.getmany(timeout_ms=200)
                for record in (rec for records in batch.values() for rec in records):
                    if json.loads(record.value).get("request_id") == request_id:
                        published = dict(record.headers)
    finally:
        await consumer.stop()
    assert published["traceparent"].decode().split("-")[1] == trace_id
