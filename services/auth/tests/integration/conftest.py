"""Fixtures of the edge's integration tests (defined in ``auth_support``)."""

from auth_support import (  # noqa: F401
    auth_dsn,
    client,
    edge_app,
    edge_settings,
    lease_namespace,
    onboard,
    operator_token,
    producer,
    replicas,
    responder,
    topics_seen,
)
