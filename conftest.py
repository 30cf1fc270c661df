"""Shared fixtures for every package's tests (real broker, Postgres, Redis, model server)."""

pytest_plugins = ["tenantry_common.testing.fixtures"]
