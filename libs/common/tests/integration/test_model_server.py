"""The local model server (llama-cpp-python serving SmolLM2) answers through the openai SDK."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI
from tenantry_common.localstack import LOCAL_MODEL_ALIAS

pytestmark = pytest.mark.integration


async def test_local_model_server_answers_a_chat_completion(model_server_url: str) -> None:
    client = AsyncOpenAI(base_url=model_server_url, api_key="local-no-key")
    response = await client.chat.completions.create(
        model=LOCAL_MODEL_ALIAS,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert response.choices[0].message.content
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 16


async def test_local_model_server_streams_with_usage(model_server_url: str) -> None:
    client = AsyncOpenAI(base_url=model_server_url, api_key="local-no-key")
    stream = await client.chat.completions.create(
        model=LOCAL_MODEL_ALIAS,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces)
