"""The OpenAI embedder through the real ``openai`` SDK, against a mock OpenAI server on a local
port (OpenAI itself cannot be reached from here)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from tenantry_retrieval.config import RetrievalSettings
from tenantry_retrieval.embeddings import OpenAIEmbedder, build_embedder

pytestmark = pytest.mark.integration


class MockOpenAI:
    """Just enough of ``POST /v1/embeddings``; records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.app = FastAPI()

        @self.app.post("/v1/embeddings")
        async def embeddings(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.requests.append(body)
            self.auth.append(request.headers.get("authorization"))
            texts = body["input"]
            # Out of order on purpose: the client must sort by index.
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), float(i), 1.0]}
                for i, t in enumerate(texts)
            ][::-1]
            return {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }


@pytest.fixture
async def mock_openai() -> AsyncIterator[tuple[MockOpenAI, str]]:
    mock = MockOpenAI()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(mock.app, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield mock, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    await task


async def test_openai_embedder_against_a_mock_server_embeds_a_batch_in_one_request(
    mock_openai: tuple[MockOpenAI, str],
) -> None:
    mock, base_url = mock_openai
    settings = RetrievalSettings(
        embedder="openai",
        openai_base_url=base_url,
        openai_api_key="sk-test-mock",
        openai_embedding_model="text-embedding-3-small",
        openai_embedding_dimension=3,
    )
    embedder = build_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    try:
        vectors = await embedder.embed(["a", "bbb", "cc"])
    finally:
        await embedder.close()
    assert vectors == [[1.0, 0.0, 1.0], [3.0, 1.0, 1.0], [2.0, 2.0, 1.0]], "in input order"
    assert len(mock.requests) == 1, "one API call for the whole batch"
    assert mock.requests[0]["model"] == "text-embedding-3-small"
    assert mock.requests[0]["input"] == ["a", "bbb", "cc"]
    assert mock.auth == ["Bearer sk-test-mock"]
    assert embedder.dimension == 3
    assert embedder.name == "openai:text-embedding-3-small"
