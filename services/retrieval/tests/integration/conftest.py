"""Retrieval's integration tests run the service's real consumer groups (questions, documents,
cache fill): they get a broker of their own, so they never inherit the answers other packages'
tests left on `chat.responses.v1` of the session broker (each would be embedded into the cache).

Pinecone's cloud cannot run here, so PineconeStore is tested against an in-process mock of its
data-plane API (``retrieval_pinecone_mock``), served once per session. Chroma's server, which
compose and k8s run, is real: the ``chroma`` command of the chromadb wheel, once per session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from retrieval_pinecone_mock import MOCK_INDEX_DIMENSION, PineconeMock, serve_pinecone_mock
from tenantry_common.localstack import free_port, http_ok, stop_process, wait_for
from tenantry_common.testing.fixtures import LOG_DIR, private_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with private_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def pinecone_mock_server() -> Iterator[PineconeMock]:
    """A mock of Pinecone's data plane: one cosine index of MOCK_INDEX_DIMENSION dimensions."""
    with serve_pinecone_mock(dimension=MOCK_INDEX_DIMENSION) as mock:
        yield mock


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (the chromadb wheel's ``chroma run``) on a free port; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "chroma-server.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("chroma")),
                "run",
                "--path",
                str(tmp_path_factory.mktemp("chroma-server")),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: http_ok(port, "/api/v2/heartbeat"), 60, "chroma server", proc)
        yield url
    finally:
        stop_process(proc)
