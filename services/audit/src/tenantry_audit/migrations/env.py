"""Alembic environment: runs as the database owner (``AuditSettings.postgres_dsn``)."""

from tenantry_audit.models import metadata
from tenantry_common.db import run_alembic_env

run_alembic_env(metadata)
