"""Retrieval's integration tests run the service's real consumer groups (questions, documents,
cache fill): they get a broker of their own, so they never inherit the answers other packages'
tests left on `chat.responses.v1` of the session broker (each would be embedded into the cache)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tenantry_common.testing.fixtures import private_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with private_broker() as bootstrap:
        yield bootstrap
