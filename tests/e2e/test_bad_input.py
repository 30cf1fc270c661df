"""Bad input everywhere: a clear 4xx from every endpoint, a DLQ entry for malformed bytes on
every consumed topic, and every service still healthy and still answering afterwards."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tenantry_common.messaging import DLQ_HEADER_ERROR
from tenantry_common.topics import (
    AUDIT,
    CHAT_CONTEXT,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DOCUMENT_STATUS,
    DOCUMENTS,
    TENANTS_CONFIG,
    TENANTS_LIFECYCLE,
    USAGE,
)

from tests.e2e.harness import System, client_token

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CONSUMED_TOPICS = [
    CHAT_REQUESTS,
    CHAT_CONTEXT,
    CHAT_RESPONSES,
    DOCUMENTS,
    DOCUMENT_STATUS,
    TENANTS_CONFIG,
    TENANTS_LIFECYCLE,
    USAGE,
    AUDIT,
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/chat", {"json": {}}),
        ("POST", "/v1/chat", {"json": {"question": ""}}),
        (
            "POST",
            "/v1/chat",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/v1/chat", {"json": {"question": "x" * 20_000}}),
        ("POST", "/v1/chat/completions", {"json": {"messages": []}}),
        (
            "POST",
            "/v1/chat/completions",
            {"json": {"messages": [{"role": "wizard", "content": "hi"}]}},
        ),
        ("POST", "/v1/documents", {"json": {"title": "", "text": "x"}}),
        ("POST", "/v1/documents", {"json": {"title": "big", "text": "x" * 2_000_000}}),
        ("DELETE", "/v1/documents/not-a-uuid", {}),
        ("GET", "/v1/documents/not-a-uuid", {}),
        ("GET", "/v1/conversations/not-a-uuid", {}),
        ("DELETE", "/v1/conversations/not-a-uuid", {}),
        ("POST", "/v1/chat", {"json": {"question": "hi", "conversation_id": "not-a-uuid"}}),
        (
            "POST",
            "/v1/chat/completions",
            {"json": {"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}},
        ),
        ("POST", "/v1/search", {"json": {"query": ""}}),
        ("POST", "/v1/feedback", {"json": {"request_id": "not-a-uuid", "value": 1}}),
        ("GET", "/v1/feedback", {"params": {"limit": 0}}),
        ("POST", "/v1/search", {"json": {"query": "refunds", "top_k": 0}}),
        ("PUT", "/v1/config", {"json": {"temperature": 9}}),
        ("PUT", "/v1/config", {"json": {"system_prompt_template": "{{secret_key}}"}}),
        ("GET", "/v1/usage", {"params": {"period": "century"}}),
        ("GET", "/v1/audit/export", {"params": {"format": "exe"}}),
        ("POST", "/v1/tenants", {"json": {"name": "x"}}),
        ("POST", "/v1/oauth/token", {"data": {"grant_type": "password"}}),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    system: System, operator_secret_file: Path, method, path, kwargs
) -> None:
    http = httpx.Client(base_url=system.edge.url, timeout=60)
    token = client_token(http, "operator", operator_secret_file.read_text())
    headers = {"Authorization": f"Bearer {token}"} | kwargs.pop("headers", {})
    r = http.request(method, path, headers=headers, **kwargs)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.text, "a 4xx must say why"


async def _dlq_count(bootstrap: str, topic: str, marker: bytes) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found = 0
    try:
        for _ in range(6):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.value and marker in record.value:
                        headers = dict(record.headers)
                        assert DLQ_HEADER_ERROR in headers
                        found += 1
    finally:
        await consumer.stop()
    return found


async def test_malformed_bytes_on_every_topic_are_dead_lettered_and_services_stay_healthy(
    system: System, kafka_bootstrap: str
) -> None:
    marker = f"garbage-{uuid.uuid4().hex}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for spec in CONSUMED_TOPICS:
            await producer.send_and_wait(
                spec.name,
                b"{" + marker + b"",
                key=str(uuid.uuid4()).encode(),
                headers=[("content-type", b"application/json")],
            )
            await producer.send_and_wait(
                spec.name,
                b'{"event_type": "' + marker + b'"}',
                key=str(uuid.uuid4()).encode(),
                headers=[("content-type", b"application/json")],
            )
    finally:
        await producer.stop()
    deadline = asyncio.get_running_loop().time() + 60
    missing = list(CONSUMED_TOPICS)
    while missing and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(2)
        missing = [s for s in missing if await _dlq_count(kafka_bootstrap, s.dlq, marker) < 2]
    assert not missing, f"no DLQ entries for {[s.name for s in missing]}"
    for service in system.services.values():
        assert service.healthy(), service.name
        assert service.ready(), service.name
