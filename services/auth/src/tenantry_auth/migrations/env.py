"""Alembic environment of the edge's database."""

from tenantry_auth.models import metadata
from tenantry_common.db import run_alembic_env

run_alembic_env(metadata)
