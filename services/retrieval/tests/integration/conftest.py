"""Retrieval's integration tests run the service's real consumer groups (questions, documents,
cache fill): they get a broker of their own, so they never inherit the answers other packages'
tests left on `chat.responses.v1` of the session broker (each would be embedded into the cache).

Pinecone's cloud cannot run here, so PineconeStore is tested against an in-process mock of its
data-plane API (``retrieval_pinecone_mock``), served once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from retrieval_pinecone_mock import MOCK_INDEX_DIMENSION, PineconeMock, serve_pinecone_mock
from tenantry_common.testing.fixtures import private_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with private_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def pinecone_mock_server() -> Iterator[PineconeMock]:
    """A mock of Pinecone's data plane: one cosine index of MOCK_INDEX_DIMENSION dimensions."""
    with serve_pinecone_mock(dimension=MOCK_INDEX_DIMENSION) as mock:
        yield mock
